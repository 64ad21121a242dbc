/* libdcf: a C99 decoder of the .dcf container (spec/FORMAT.md), the third implementation of spec/.
 *
 * Open a file from memory, from a path or from a read callback; list its tensors; decode one tensor into a buffer
 * the caller gives (or one the library allocates within a caller-given limit). No global state: every call works on
 * a dcf_file handle, and all memory comes from the allocator given at open (malloc/free by default). A handle is not
 * thread-safe; use one handle per thread (handles on the same bytes are independent).
 *
 * Every function returning int returns DCF_OK (0) or one of the error codes below, and fills the optional
 * dcf_error with the code and a one-line message naming the file part, tensor and stage at fault.
 */
#ifndef DCF_H
#define DCF_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(DCF_EXPORT) && defined(__GNUC__)
#define DCF_API __attribute__((visibility("default")))
#else
#define DCF_API
#endif

/* Error codes: the error classes of spec/FORMAT.md section 9, then the library's own. */
enum {
    DCF_OK = 0,
    DCF_E_FORMAT = 1,        /* FormatError: not a .dcf file, malformed msgpack or fields, a stage's checks failed */
    DCF_E_INTEGRITY = 2,     /* IntegrityError: a CRC-32 mismatch (a kind of FormatError) */
    DCF_E_LIMIT = 3,         /* LimitError: a size, count or offset over a limit or past the file (a FormatError) */
    DCF_E_MISSING_STAGE = 4, /* MissingStageError: a stage this library does not know, or a newer version of it */
    DCF_E_UNSUPPORTED = 5,   /* a known stage this build cannot decode (lzma, bz2; zstd/zlib when built without) */
    DCF_E_IO = 6,            /* reading the file failed */
    DCF_E_NOMEM = 7,         /* the allocator returned NULL */
    DCF_E_ARG = 8            /* a bad argument: NULL, tensor index out of range, output buffer too small */
};

/* Dtypes (FORMAT.md 4.1). F16 and BF16 are decoded as their 16-bit patterns, BOOL as bytes 0/1. */
typedef enum {
    DCF_F64, DCF_F32, DCF_F16, DCF_BF16, DCF_I64, DCF_I32, DCF_I16, DCF_I8,
    DCF_U64, DCF_U32, DCF_U16, DCF_U8, DCF_BOOL
} dcf_dtype;

#define DCF_MAX_DIMS 32
#define DCF_MESSAGE_SIZE 320

typedef struct {
    int code;                        /* a DCF_E_* code, DCF_OK when nothing failed */
    char message[DCF_MESSAGE_SIZE];  /* one line, NUL-terminated */
} dcf_error;

/* Caller-given limits. A zero field takes the default in brackets. */
typedef struct {
    uint32_t max_metadata;  /* largest index and largest record map, bytes [64 MiB, the spec's limit] */
    uint64_t max_output;    /* largest decoded tensor, bytes [2^40, the spec's limit] */
    uint32_t max_tensors;   /* [2^20] */
    uint64_t max_work;      /* working memory of one tensor's stages (decode tables, block buffers) [2 MiB] */
} dcf_limits;

/* Allocator: every byte the library holds comes from here (the default is malloc/free). */
typedef struct {
    void *(*alloc)(void *ctx, size_t size);
    void (*free)(void *ctx, void *ptr);
    void *ctx;
} dcf_allocator;

/* A random-access byte source: read `size` bytes at `offset` into `dst`, return 0 on success. */
typedef int (*dcf_read_fn)(void *ctx, uint64_t offset, void *dst, size_t size);

typedef struct {
    dcf_limits limits;
    const dcf_allocator *allocator;  /* NULL: malloc/free */
} dcf_options;

typedef struct dcf_file dcf_file;

/* A tensor's header, from its record (read and checked by dcf_info). `name` points into the handle's memory and
 * stays valid until dcf_close; it is NUL-terminated (a name holding a NUL byte is cut there; name_len is the full
 * length). */
typedef struct {
    const char *name;
    size_t name_len;
    dcf_dtype dtype;
    const char *dtype_name;  /* "F32", ... */
    uint32_t ndim;
    uint64_t shape[DCF_MAX_DIMS];
    uint64_t nelem;          /* product of shape (1 for a scalar) */
    uint64_t nbytes;         /* nelem x itemsize: the size of the decoded tensor */
} dcf_info;

/* Open `size` bytes at `data` (not copied: they must outlive the handle). Checks everything FORMAT.md 8.2 lists
 * for open time (magic, trailer, index, entries); a damaged tensor does not fail open. opts may be NULL. */
DCF_API int dcf_open_memory(dcf_file **out, const void *data, size_t size, const dcf_options *opts, dcf_error *err);
/* Open a file through a read callback: the index is read at open, each tensor's bytes when it is decoded. */
DCF_API int dcf_open_reader(dcf_file **out, dcf_read_fn read, void *ctx, uint64_t size, const dcf_options *opts,
                    dcf_error *err);
/* Open a file by path: mapped read-only with mmap on POSIX systems (decoding then takes no heap for the stored
 * bytes, as dcf_open_memory; the file must not shrink while open), else through stdio. Unmapped by dcf_close. */
DCF_API int dcf_open_path(dcf_file **out, const char *path, const dcf_options *opts, dcf_error *err);
DCF_API void dcf_close(dcf_file *f);

DCF_API size_t dcf_count(const dcf_file *f);
/* The index's name of tensor i (valid until dcf_close), without reading its record. */
DCF_API const char *dcf_name(const dcf_file *f, size_t i, size_t *len);
/* Index of the tensor named `name` (len bytes), or DCF_E_ARG. */
DCF_API int dcf_find(const dcf_file *f, const char *name, size_t len, size_t *index);
/* Read and check tensor i's record (CRC, fields, stream descriptors) and report its dtype and shape. */
DCF_API int dcf_info_at(dcf_file *f, size_t i, dcf_info *info, dcf_error *err);

/* Decode tensor i into dst (dst_size >= its nbytes: C order, little-endian). On error dst's contents are
 * unspecified. Heap use beyond the handle: the tensor's record, the stages' working memory (<= max_work, which
 * covers the windows stored bytes are read through) and zstd's or zlib's decoder state, in every open mode
 * (libdcf/README.md, Memory per tensor, lists the chains that need more). */
DCF_API int dcf_decode(dcf_file *f, size_t i, void *dst, size_t dst_size, dcf_error *err);
/* Decode tensor i into a buffer allocated with the handle's allocator (free it with dcf_free), refusing
 * (DCF_E_LIMIT) a tensor larger than max_bytes. */
DCF_API int dcf_decode_alloc(dcf_file *f, size_t i, uint64_t max_bytes, void **out, size_t *out_size, dcf_error *err);
DCF_API void dcf_free(dcf_file *f, void *ptr);

/* "FormatError", "IntegrityError", "LimitError", "MissingStageError", "UnsupportedError", ... for a code. */
DCF_API const char *dcf_code_name(int code);
DCF_API const char *dcf_dtype_name(dcf_dtype dtype);
DCF_API size_t dcf_dtype_size(dcf_dtype dtype);
/* Which optional codecs this build has, a bit mask of DCF_HAVE_ZSTD, DCF_HAVE_ZLIB, and which vector path the rANS
 * decoder takes in this process: DCF_HAVE_AVX2 or DCF_HAVE_AVX512 (none: the portable loop), the best the CPU and
 * the build have, or a lower one named by the environment variable DCF_SIMD (scalar, avx2 or avx512, for tests and
 * comparisons; every path decodes the same symbols). */
#define DCF_HAVE_ZSTD 1
#define DCF_HAVE_ZLIB 2
#define DCF_HAVE_AVX2 4
#define DCF_HAVE_AVX512 8
DCF_API int dcf_features(void);

#ifdef __cplusplus
}
#endif
#endif

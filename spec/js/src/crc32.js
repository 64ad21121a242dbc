// CRC-32 (ISO-HDLC, as zlib/gzip/PNG). node:zlib.crc32 exists from Node 20.15 / 22.2; otherwise a table version.
import * as zlib from 'node:zlib';

let TABLE = null;

function tableCrc32(data, value = 0) {
  if (TABLE === null) {
    TABLE = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      TABLE[n] = c >>> 0;
    }
  }
  let c = (value ^ 0xffffffff) >>> 0;
  for (let i = 0; i < data.length; i++) c = TABLE[(c ^ data[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/** CRC-32 of `data` (Uint8Array), continuing from `value` (the CRC of the bytes before it). */
export const crc32 = typeof zlib.crc32 === 'function' ? (data, value = 0) => zlib.crc32(data, value) >>> 0 : tableCrc32;
export { tableCrc32 };

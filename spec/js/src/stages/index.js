// The stages dcf-js implements, by id.
import { raw } from './raw.js';
import { bz2Stage, lzmaStage, zlibStage, zstdStage } from './generic.js';
import { prune } from './prune.js';
import { sparse } from './sparse.js';
import { huffman } from './huffman.js';
import { kmeans } from './kmeans.js';
import { uniform } from './uniform.js';
import { rans } from './rans.js';
import { bytegroup } from './bytegroup.js';
import { rowscale } from './rowscale.js';
import { tcq } from './tcq.js';

export const STAGES = Object.freeze({
  raw,
  zlib: zlibStage,
  zstd: zstdStage,
  lzma: lzmaStage,
  bz2: bz2Stage,
  prune,
  sparse,
  huffman,
  kmeans,
  uniform,
  rans,
  bytegroup,
  rowscale,
  tcq,
});

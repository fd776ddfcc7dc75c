// The one ustar header shoal writes (regular file, mode 0644, uid/gid 0, no user names), and a
// decoder that checks what any tar checks: checksum, magic, typeflag, octal fields. Sizes stay
// under 8 GiB, so neither pax size records nor GNU base-256 numbers are ever needed.
import { ShoalError } from "../errors.ts";
import { TAR_BLOCK_BYTES } from "./format.ts";

const NAME_BYTES = 100;
const SIZE_DIGITS = 11; // 12-byte field: 11 octal digits and a NUL
export const MAX_ENTRY_BYTES = 8 ** SIZE_DIGITS - 1;

// Field offsets and lengths from POSIX.1-1988 ustar (pax interchange format, "ustar Interchange Format").
const FIELD = {
  name: [0, 100],
  mode: [100, 8],
  uid: [108, 8],
  gid: [116, 8],
  size: [124, 12],
  mtime: [136, 12],
  checksum: [148, 8],
  typeflag: [156, 1],
  magic: [257, 6],
  version: [263, 2],
  devmajor: [329, 8],
  devminor: [337, 8],
  prefix: [345, 155],
} as const;

const REGULAR_FILE = 0x30; // '0'
const ASCII_SPACE = 0x20;
const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: true });

export interface TarHeader {
  name: string;
  sizeBytes: number;
  mtimeSeconds: number;
}

/** A 512-byte ustar header for a regular file. Names are ASCII and at most 100 bytes. */
export function encodeTarHeader(header: TarHeader): Uint8Array {
  const block = new Uint8Array(TAR_BLOCK_BYTES);
  const name = encoder.encode(header.name);
  if (name.byteLength > NAME_BYTES) throw new ShoalError("INTERNAL", `tar entry name '${header.name}' is over ${NAME_BYTES} bytes`);
  if (!Number.isSafeInteger(header.sizeBytes) || header.sizeBytes < 0 || header.sizeBytes > MAX_ENTRY_BYTES) {
    throw new ShoalError("INTERNAL", `tar entry size ${header.sizeBytes} does not fit a ustar header`);
  }
  block.set(name, FIELD.name[0]);
  putOctal(block, FIELD.mode, 0o644);
  putOctal(block, FIELD.uid, 0);
  putOctal(block, FIELD.gid, 0);
  putOctal(block, FIELD.size, header.sizeBytes);
  putOctal(block, FIELD.mtime, header.mtimeSeconds);
  block[FIELD.typeflag[0]] = REGULAR_FILE;
  block.set(encoder.encode("ustar\0"), FIELD.magic[0]);
  block.set(encoder.encode("00"), FIELD.version[0]);
  putOctal(block, FIELD.devmajor, 0);
  putOctal(block, FIELD.devminor, 0);
  // Checksum: six octal digits, NUL, space (as GNU tar and bsdtar write it).
  const sum = checksumOf(block);
  block.set(encoder.encode(sum.toString(8).padStart(6, "0")), FIELD.checksum[0]);
  block[FIELD.checksum[0] + 6] = 0;
  block[FIELD.checksum[0] + 7] = ASCII_SPACE;
  return block;
}

/** A header block's fields, or a reason it is not a ustar regular-file header. */
export type DecodedHeader = { ok: true; header: TarHeader } | { ok: false; reason: string };

export function decodeTarHeader(block: Uint8Array): DecodedHeader {
  const stored = readOctal(block, FIELD.checksum);
  const computed = checksumOf(block);
  if (stored !== computed) return { ok: false, reason: `its checksum is ${stored ?? "unreadable"} but its bytes sum to ${computed}` };
  if (text(block, FIELD.magic) !== "ustar" || block[FIELD.version[0]] !== 0x30 || block[FIELD.version[0] + 1] !== 0x30) {
    return { ok: false, reason: "it is not a POSIX ustar header (magic 'ustar', version '00')" };
  }
  if (block[FIELD.typeflag[0]] !== REGULAR_FILE) return { ok: false, reason: `its type is '${String.fromCharCode(block[FIELD.typeflag[0]]!)}', not a regular file` };
  if (block[FIELD.prefix[0]] !== 0) return { ok: false, reason: "its name uses the ustar prefix field, which shoal never writes" };
  const name = text(block, FIELD.name);
  const sizeBytes = readOctal(block, FIELD.size);
  const mtimeSeconds = readOctal(block, FIELD.mtime);
  if (name === undefined) return { ok: false, reason: "its name is not UTF-8" };
  if (sizeBytes === undefined || mtimeSeconds === undefined) return { ok: false, reason: "its size or mtime is not an octal number" };
  return { ok: true, header: { name, sizeBytes, mtimeSeconds } };
}

export function isZeroBlock(block: Uint8Array): boolean {
  for (let index = 0; index < block.byteLength; index++) if (block[index] !== 0) return false;
  return true;
}

/** Bytes of zero padding that follow `sizeBytes` of entry data. */
export function paddingBytesAfter(sizeBytes: number): number {
  return (TAR_BLOCK_BYTES - (sizeBytes % TAR_BLOCK_BYTES)) % TAR_BLOCK_BYTES;
}

/** Sum of the block's bytes with the checksum field counted as spaces (ustar's rule). */
function checksumOf(block: Uint8Array): number {
  let sum = 0;
  for (let index = 0; index < TAR_BLOCK_BYTES; index++) sum += block[index]!;
  const [start, length] = FIELD.checksum;
  for (let index = start; index < start + length; index++) sum += ASCII_SPACE - block[index]!;
  return sum;
}

/** Zero-padded octal digits filling the field but its last byte, which stays NUL. */
function putOctal(block: Uint8Array, [start, length]: readonly [number, number], value: number): void {
  const digits = value.toString(8).padStart(length - 1, "0");
  if (digits.length > length - 1) throw new ShoalError("INTERNAL", `${value} does not fit a ${length}-byte tar field`);
  block.set(encoder.encode(digits), start);
}

/** Octal digits, optionally space-padded, ended by NUL or space; undefined if anything else. */
function readOctal(block: Uint8Array, [start, length]: readonly [number, number]): number | undefined {
  let value = 0;
  let digits = 0;
  let index = start;
  const end = start + length;
  while (index < end && block[index] === ASCII_SPACE) index++;
  for (; index < end; index++) {
    const byte = block[index]!;
    if (byte < 0x30 || byte > 0x37) break;
    value = value * 8 + (byte - 0x30);
    digits++;
  }
  if (digits === 0) return undefined;
  for (; index < end; index++) if (block[index] !== 0 && block[index] !== ASCII_SPACE) return undefined;
  return value;
}

/** A NUL-terminated (or field-filling) UTF-8 string field. */
function text(block: Uint8Array, [start, length]: readonly [number, number]): string | undefined {
  let end = start;
  while (end < start + length && block[end] !== 0) end++;
  try {
    return decoder.decode(block.subarray(start, end));
  } catch {
    return undefined;
  }
}

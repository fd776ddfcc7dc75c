// The NBD protocol's numbers (NetworkBlockDevice/nbd doc/proto.md): magics, option and command
// codes, flags, sizes and limits, and their names for logs and error messages.
import {
  NBD_EINVAL,
  NBD_EIO,
  NBD_ENOMEM,
  NBD_ENOSPC,
  NBD_ENOTSUP,
  NBD_EOVERFLOW,
  NBD_EPERM,
  NBD_ESHUTDOWN,
} from "../../core/errors.ts";
import { MAX_REQUEST_BYTES } from "../../core/geometry.ts";

// ---- Magics -------------------------------------------------------------------------------------

export const NBD_INIT_MAGIC = 0x4e42444d41474943n; // "NBDMAGIC"
export const NBD_OPTS_MAGIC = 0x49484156454f5054n; // "IHAVEOPT"
export const NBD_OPTION_REPLY_MAGIC = 0x0003e889045565a9n;
export const NBD_REQUEST_MAGIC = 0x25609513;
export const NBD_SIMPLE_REPLY_MAGIC = 0x67446698;
export const NBD_STRUCTURED_REPLY_MAGIC = 0x668e33ef;

// ---- Handshake ----------------------------------------------------------------------------------

export const NBD_FLAG_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_NO_ZEROES = 1 << 1;
export const NBD_FLAG_C_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_C_NO_ZEROES = 1 << 1;
/** What this server offers; a client setting any other bit MUST be dropped (spec, "Client flags"). */
export const SERVER_HANDSHAKE_FLAGS = NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES;

export const NBD_OPT_EXPORT_NAME = 1;
export const NBD_OPT_ABORT = 2;
export const NBD_OPT_LIST = 3;
export const NBD_OPT_STARTTLS = 5;
export const NBD_OPT_INFO = 6;
export const NBD_OPT_GO = 7;
export const NBD_OPT_STRUCTURED_REPLY = 8;
export const NBD_OPT_LIST_META_CONTEXT = 9;
export const NBD_OPT_SET_META_CONTEXT = 10;
export const NBD_OPT_EXTENDED_HEADERS = 11;

export const NBD_REP_ACK = 1;
export const NBD_REP_SERVER = 2;
export const NBD_REP_INFO = 3;
export const NBD_REP_META_CONTEXT = 4;
const NBD_REP_FLAG_ERROR = 0x80000000;
export const NBD_REP_ERR_UNSUP = NBD_REP_FLAG_ERROR + 1;
export const NBD_REP_ERR_POLICY = NBD_REP_FLAG_ERROR + 2;
export const NBD_REP_ERR_INVALID = NBD_REP_FLAG_ERROR + 3;
export const NBD_REP_ERR_PLATFORM = NBD_REP_FLAG_ERROR + 4;
export const NBD_REP_ERR_TLS_REQD = NBD_REP_FLAG_ERROR + 5;
export const NBD_REP_ERR_UNKNOWN = NBD_REP_FLAG_ERROR + 6;
export const NBD_REP_ERR_SHUTDOWN = NBD_REP_FLAG_ERROR + 7;
export const NBD_REP_ERR_BLOCK_SIZE_REQD = NBD_REP_FLAG_ERROR + 8;
export const NBD_REP_ERR_TOO_BIG = NBD_REP_FLAG_ERROR + 9;

export const NBD_INFO_EXPORT = 0;
export const NBD_INFO_NAME = 1;
export const NBD_INFO_DESCRIPTION = 2;
export const NBD_INFO_BLOCK_SIZE = 3;

// ---- Transmission -------------------------------------------------------------------------------

export const NBD_FLAG_HAS_FLAGS = 1 << 0;
export const NBD_FLAG_READ_ONLY = 1 << 1;
export const NBD_FLAG_SEND_FLUSH = 1 << 2;
export const NBD_FLAG_SEND_FUA = 1 << 3;
export const NBD_FLAG_ROTATIONAL = 1 << 4;
export const NBD_FLAG_SEND_TRIM = 1 << 5;
export const NBD_FLAG_SEND_WRITE_ZEROES = 1 << 6;
export const NBD_FLAG_SEND_DF = 1 << 7;
export const NBD_FLAG_CAN_MULTI_CONN = 1 << 8;
export const NBD_FLAG_SEND_CACHE = 1 << 10;
export const NBD_FLAG_SEND_FAST_ZERO = 1 << 11;

export const NBD_CMD_READ = 0;
export const NBD_CMD_WRITE = 1;
export const NBD_CMD_DISC = 2;
export const NBD_CMD_FLUSH = 3;
export const NBD_CMD_TRIM = 4;
export const NBD_CMD_CACHE = 5;
export const NBD_CMD_WRITE_ZEROES = 6;
export const NBD_CMD_BLOCK_STATUS = 7;

export const NBD_CMD_FLAG_FUA = 1 << 0;
export const NBD_CMD_FLAG_NO_HOLE = 1 << 1;
export const NBD_CMD_FLAG_DF = 1 << 2;
export const NBD_CMD_FLAG_REQ_ONE = 1 << 3;
export const NBD_CMD_FLAG_FAST_ZERO = 1 << 4;

export const NBD_REPLY_FLAG_DONE = 1 << 0;
export const NBD_REPLY_TYPE_NONE = 0;
export const NBD_REPLY_TYPE_OFFSET_DATA = 1;
export const NBD_REPLY_TYPE_OFFSET_HOLE = 2;
export const NBD_REPLY_TYPE_BLOCK_STATUS = 5;
const NBD_REPLY_TYPE_FLAG_ERROR = 1 << 15;
export const NBD_REPLY_TYPE_ERROR = NBD_REPLY_TYPE_FLAG_ERROR + 1;
export const NBD_REPLY_TYPE_ERROR_OFFSET = NBD_REPLY_TYPE_FLAG_ERROR + 2;

export const NBD_STATE_HOLE = 1 << 0;
export const NBD_STATE_ZERO = 1 << 1;

export const BASE_ALLOCATION_CONTEXT = "base:allocation";
/** Our id for base:allocation in SET_META_CONTEXT replies; LIST replies use 0 as the spec asks. */
export const BASE_ALLOCATION_CONTEXT_ID = 1;

// ---- Sizes and limits ---------------------------------------------------------------------------

export const GREETING_BYTES = 18;
export const CLIENT_FLAGS_BYTES = 4;
export const OPTION_HEADER_BYTES = 16;
export const OPTION_REPLY_HEADER_BYTES = 20;
export const EXPORT_NAME_REPLY_BYTES = 10;
export const EXPORT_NAME_PADDING_BYTES = 124;
export const REQUEST_HEADER_BYTES = 28;
export const SIMPLE_REPLY_HEADER_BYTES = 16;
export const STRUCTURED_REPLY_HEADER_BYTES = 20;
/** Where the data starts in a structured read reply: chunk header plus the chunk's 64-bit offset. */
export const STRUCTURED_READ_PAYLOAD_OFFSET = STRUCTURED_REPLY_HEADER_BYTES + 8;

/** The spec's hard limit for names, queries and messages. */
export const MAX_STRING_BYTES = 4096;
/** Option payloads are names and queries; anything bigger is treated as a denial of service. */
export const MAX_OPTION_DATA_BYTES = 64 * 1024;
export const MAX_META_CONTEXT_QUERIES = 128;
/** Bounds a BLOCK_STATUS reply (8 bytes each); the spec lets a server describe less than asked. */
export const MAX_BLOCK_STATUS_DESCRIPTORS = 1024;
export const MIN_BLOCK_SIZE_BYTES = 512;
export const MAX_BLOCK_SIZE_BYTES = MAX_REQUEST_BYTES;
export const DEFAULT_PREFERRED_BLOCK_SIZE_BYTES = 4096;


// ---- Names for logs and error messages ----------------------------------------------------------

const ERRNO_NAMES: Record<number, string> = {
  [NBD_EPERM]: "EPERM",
  [NBD_EIO]: "EIO",
  [NBD_ENOMEM]: "ENOMEM",
  [NBD_EINVAL]: "EINVAL",
  [NBD_ENOSPC]: "ENOSPC",
  [NBD_EOVERFLOW]: "EOVERFLOW",
  [NBD_ENOTSUP]: "ENOTSUP",
  [NBD_ESHUTDOWN]: "ESHUTDOWN",
};

export function errnoName(errno: number): string {
  return ERRNO_NAMES[errno] ?? `errno ${errno}`;
}

const COMMAND_NAMES = ["READ", "WRITE", "DISC", "FLUSH", "TRIM", "CACHE", "WRITE_ZEROES", "BLOCK_STATUS"];

export function commandName(type: number): string {
  return COMMAND_NAMES[type] ?? `command ${type}`;
}

const OPTION_REPLY_NAMES: Record<number, string> = {
  [NBD_REP_ERR_UNSUP]: "NBD_REP_ERR_UNSUP",
  [NBD_REP_ERR_POLICY]: "NBD_REP_ERR_POLICY",
  [NBD_REP_ERR_INVALID]: "NBD_REP_ERR_INVALID",
  [NBD_REP_ERR_PLATFORM]: "NBD_REP_ERR_PLATFORM",
  [NBD_REP_ERR_TLS_REQD]: "NBD_REP_ERR_TLS_REQD",
  [NBD_REP_ERR_UNKNOWN]: "NBD_REP_ERR_UNKNOWN",
  [NBD_REP_ERR_SHUTDOWN]: "NBD_REP_ERR_SHUTDOWN",
  [NBD_REP_ERR_BLOCK_SIZE_REQD]: "NBD_REP_ERR_BLOCK_SIZE_REQD",
  [NBD_REP_ERR_TOO_BIG]: "NBD_REP_ERR_TOO_BIG",
};

export function optionReplyName(replyType: number): string {
  return OPTION_REPLY_NAMES[replyType] ?? `reply type ${replyType}`;
}

export function isOptionReplyError(replyType: number): boolean {
  return replyType >= NBD_REP_FLAG_ERROR;
}

export function isReplyTypeError(type: number): boolean {
  return (type & NBD_REPLY_TYPE_FLAG_ERROR) !== 0;
}

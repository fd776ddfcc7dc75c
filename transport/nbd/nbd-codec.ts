// The NBD wire format in one import: the protocol's numbers, its byte fields, and the handshake's
// and transmission's messages, each in a file of its own.
export * from "./nbd-constants.ts";
export * from "./nbd-bytes.ts";
export * from "./nbd-handshake-codec.ts";
export * from "./nbd-transmission-codec.ts";

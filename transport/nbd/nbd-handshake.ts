// The fixed-newstyle handshake of one NBD connection: client flags, then options (LIST, INFO, GO,
// EXPORT_NAME, STARTTLS, STRUCTURED_REPLY, meta contexts) until the client picks an export or
// leaves. It reads from and answers through its NbdConnection; it owns only what was negotiated.
import type { BlockDevice } from "../../core/block-device.ts";
import { asShoalError, ShoalError } from "../../core/errors.ts";
import type { NbdConnection } from "./nbd-connection.ts";
import { OUTBOX_HIGH_WATER_BYTES } from "./nbd-server-budget.ts";
import {
  BASE_ALLOCATION_CONTEXT,
  BASE_ALLOCATION_CONTEXT_ID,
  CLIENT_FLAGS_BYTES,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_INFO_DESCRIPTION,
  NBD_INFO_NAME,
  NBD_OPT_ABORT,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_GO,
  NBD_OPT_INFO,
  NBD_OPT_LIST,
  NBD_OPT_LIST_META_CONTEXT,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STARTTLS,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_REP_ACK,
  NBD_REP_ERR_INVALID,
  NBD_REP_ERR_POLICY,
  NBD_REP_ERR_SHUTDOWN,
  NBD_REP_ERR_TLS_REQD,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_ERR_UNSUP,
  NBD_REP_INFO,
  NBD_REP_META_CONTEXT,
  NBD_REP_SERVER,
  OPTION_HEADER_BYTES,
  blockSizeConstraints,
  decodeClientFlags,
  decodeInfoRequest,
  decodeMetaContextRequest,
  decodeOptionHeader,
  decodeString,
  encodeExportNameReply,
  encodeInfoBlockSize,
  encodeInfoDescription,
  encodeInfoExport,
  encodeInfoName,
  encodeMetaContextPayload,
  encodeOptionError,
  encodeOptionReply,
  encodeServerReplyPayload,
  queryMatchesBaseAllocation,
  transmissionFlagsFor,
  type OptionHeader,
} from "./nbd-codec.ts";

const MAX_OPTIONS_PER_CONNECTION = 1024;
const MAX_LISTED_EXPORTS = 10_000;

export class NbdHandshake {
  private flagsRead = false;
  /** Clients without C_FIXED_NEWSTYLE are served the same way (the spec allows it), but TLS
   *  must only be offered to clients that set it. */
  private fixedNewstyle = false;
  private noZeroes = false;
  private optionHeader: OptionHeader | undefined;
  private optionCount = 0;
  private structuredReplies = false;
  /** Export named by the last SET_META_CONTEXT that selected base:allocation. */
  private metaContextExport: string | undefined;
  private plainRefusalLogged = false;

  constructor(private readonly connection: NbdConnection) {}

  /** Reads client flags and options while the connection is in its handshake and may answer. */
  read(): void {
    const { connection } = this;
    const input = connection.input;
    while (connection.phase === "handshake") {
      if (connection.unsentBytes() >= OUTBOX_HIGH_WATER_BYTES) return;
      if (!this.flagsRead) {
        if (input.lengthBytes < CLIENT_FLAGS_BYTES) return;
        const flags = decodeClientFlags(input.take(CLIENT_FLAGS_BYTES));
        if (flags instanceof ShoalError) return connection.violation(flags.message);
        this.fixedNewstyle = (flags & NBD_FLAG_C_FIXED_NEWSTYLE) !== 0;
        this.noZeroes = (flags & NBD_FLAG_C_NO_ZEROES) !== 0;
        this.flagsRead = true;
        continue;
      }
      if (this.optionHeader === undefined) {
        if (input.lengthBytes < OPTION_HEADER_BYTES) return;
        const header = decodeOptionHeader(input.take(OPTION_HEADER_BYTES));
        if (header instanceof ShoalError) return connection.violation(header.message);
        if (++this.optionCount > MAX_OPTIONS_PER_CONNECTION) {
          return connection.violation(`sent more than ${MAX_OPTIONS_PER_CONNECTION} options`);
        }
        this.optionHeader = header;
      }
      const { option, lengthBytes } = this.optionHeader;
      if (input.lengthBytes < lengthBytes) return;
      const data = input.take(lengthBytes);
      this.optionHeader = undefined;
      this.handleOption(option, data);
    }
  }

  private handleOption(option: number, data: Uint8Array): void {
    const { context } = this.connection;
    if (context.shuttingDown && option !== NBD_OPT_ABORT && option !== NBD_OPT_EXPORT_NAME) {
      return this.refuse(option, NBD_REP_ERR_SHUTDOWN, "the server is shutting down");
    }
    if (context.tls?.required && !this.connection.isTls && option !== NBD_OPT_STARTTLS && option !== NBD_OPT_ABORT) {
      return this.refuseWithoutTls(option);
    }
    switch (option) {
      case NBD_OPT_EXPORT_NAME:
        return this.handleExportName(data);
      case NBD_OPT_ABORT:
        this.reply(option, NBD_REP_ACK);
        return this.connection.beginDrain();
      case NBD_OPT_LIST:
        return this.handleList(data);
      case NBD_OPT_STARTTLS:
        return this.handleStartTls(data);
      case NBD_OPT_INFO:
      case NBD_OPT_GO:
        return this.handleInfo(option, data);
      case NBD_OPT_STRUCTURED_REPLY:
        return this.handleStructuredReply(data);
      case NBD_OPT_LIST_META_CONTEXT:
      case NBD_OPT_SET_META_CONTEXT:
        return this.handleMetaContext(option, data);
      default:
        return this.refuse(option, NBD_REP_ERR_UNSUP, `option ${option} is not supported by this server`);
    }
  }

  private reply(option: number, replyType: number, payload?: Uint8Array): void {
    this.connection.send(encodeOptionReply(option, replyType, payload));
  }

  private refuse(option: number, replyType: number, message: string): void {
    this.connection.send(encodeOptionError(option, replyType, message));
  }

  /** The catalog's answer, with a throwing catalog treated as "not available" rather than a crash. */
  private openExport(name: string): BlockDevice | ShoalError {
    try {
      const device = this.connection.context.catalog.open(name);
      if (device !== undefined) return device;
      return new ShoalError("UNKNOWN_VOLUME", `export '${name}' does not exist; NBD_OPT_LIST (nbdinfo --list) shows the exports`);
    } catch (err) {
      return asShoalError(err);
    }
  }

  private handleExportName(data: Uint8Array): void {
    const name = decodeString(data, "export name");
    if (name instanceof ShoalError) return this.connection.violation(name.message);
    const device = this.openExport(name);
    // NBD_OPT_EXPORT_NAME cannot return an error, so the spec mandates a hard disconnect.
    if (device instanceof ShoalError) return this.connection.violation(`NBD_OPT_EXPORT_NAME: ${device.message}`);
    if (this.connection.context.shuttingDown) return this.connection.beginDrain();
    const flags = transmissionFlagsFor(device.readOnly, this.structuredReplies);
    this.connection.send(encodeExportNameReply(device.sizeBytes, flags, this.noZeroes));
    this.enterTransmission(name, device);
  }

  private handleList(data: Uint8Array): void {
    if (data.length !== 0) return this.refuse(NBD_OPT_LIST, NBD_REP_ERR_INVALID, "NBD_OPT_LIST takes no data");
    let exports: { name: string; description: string }[];
    try {
      exports = this.connection.context.catalog.list();
    } catch (err) {
      return this.refuse(NBD_OPT_LIST, NBD_REP_ERR_POLICY, `cannot list exports: ${asShoalError(err).message}`);
    }
    if (exports.length > MAX_LISTED_EXPORTS) {
      this.connection.context.log.warn(`nbd client ${this.connection.peer}: NBD_OPT_LIST shows the first ${MAX_LISTED_EXPORTS} of ${exports.length} exports`);
    }
    for (const entry of exports.slice(0, MAX_LISTED_EXPORTS)) {
      this.reply(NBD_OPT_LIST, NBD_REP_SERVER, encodeServerReplyPayload(entry.name, entry.description));
    }
    this.reply(NBD_OPT_LIST, NBD_REP_ACK);
  }

  /** ACK, then the same connection continues inside TLS; the client must present a certificate. */
  private handleStartTls(data: Uint8Array): void {
    const option = NBD_OPT_STARTTLS;
    const { connection } = this;
    if (data.length !== 0) return this.refuse(option, NBD_REP_ERR_INVALID, "NBD_OPT_STARTTLS takes no data");
    const tls = connection.context.tls;
    if (tls === undefined) return this.refuse(option, NBD_REP_ERR_POLICY, "TLS is not configured on this server (start the node with --tls)");
    if (connection.isTls) return this.refuse(option, NBD_REP_ERR_INVALID, "TLS is already on");
    if (!this.fixedNewstyle) return this.refuse(option, NBD_REP_ERR_POLICY, "TLS needs fixed newstyle negotiation");
    this.reply(option, NBD_REP_ACK);
    connection.flushBatch();
    if (connection.input.lengthBytes > 0) return connection.violation("sent data after NBD_OPT_STARTTLS before the TLS handshake");
    // The spec: options negotiated before STARTTLS are forgotten.
    this.structuredReplies = false;
    this.metaContextExport = undefined;
    // The ACK is tiny and goes out at once; if the kernel did not take it, TLS would jump the queue.
    if (connection.outboxPendingBytes > 0) return connection.violation("is not reading the NBD_OPT_STARTTLS reply");
    connection.upgradeToTls(tls.identity);
  }

  /** --tls-required: the spec's answer to anything but STARTTLS and ABORT before TLS is on. */
  private refuseWithoutTls(option: number): void {
    if (!this.plainRefusalLogged) {
      this.plainRefusalLogged = true;
      this.connection.context.log.warn(`nbd client ${this.connection.peer}: refused: this server requires TLS and the client did not NBD_OPT_STARTTLS`);
    }
    // NBD_OPT_EXPORT_NAME has no error reply: the spec says to close.
    if (option === NBD_OPT_EXPORT_NAME) return this.connection.beginDrain();
    this.refuse(option, NBD_REP_ERR_TLS_REQD, "this server requires TLS: send NBD_OPT_STARTTLS first");
  }

  private handleStructuredReply(data: Uint8Array): void {
    const option = NBD_OPT_STRUCTURED_REPLY;
    if (data.length !== 0) return this.refuse(option, NBD_REP_ERR_INVALID, "NBD_OPT_STRUCTURED_REPLY takes no data");
    if (this.structuredReplies) return this.refuse(option, NBD_REP_ERR_INVALID, "structured replies are already negotiated");
    this.structuredReplies = true;
    this.reply(option, NBD_REP_ACK);
  }

  private handleInfo(option: number, data: Uint8Array): void {
    const request = decodeInfoRequest(data);
    if (request instanceof ShoalError) return this.refuse(option, NBD_REP_ERR_INVALID, request.message);
    const device = this.openExport(request.exportName);
    if (device instanceof ShoalError) return this.refuse(option, NBD_REP_ERR_UNKNOWN, device.message);
    const flags = transmissionFlagsFor(device.readOnly, this.structuredReplies);
    this.reply(option, NBD_REP_INFO, encodeInfoExport(device.sizeBytes, flags));
    if (request.infoTypes.includes(NBD_INFO_NAME)) {
      this.reply(option, NBD_REP_INFO, encodeInfoName(device.name || request.exportName));
    }
    if (request.infoTypes.includes(NBD_INFO_DESCRIPTION)) {
      const description = this.describe(request.exportName);
      if (description) this.reply(option, NBD_REP_INFO, encodeInfoDescription(description));
    }
    // Sent even when not requested: harmless to clients that ignore it, and tells the rest to
    // keep requests at or under 32 MiB.
    this.reply(option, NBD_REP_INFO, encodeInfoBlockSize(blockSizeConstraints(device.preferredBlockSizeBytes)));
    this.reply(option, NBD_REP_ACK);
    if (option === NBD_OPT_GO) this.enterTransmission(request.exportName, device);
  }

  private describe(exportName: string): string {
    try {
      return this.connection.context.catalog.list().find((entry) => entry.name === exportName)?.description ?? "";
    } catch {
      return ""; // The description is optional; NBD_OPT_LIST reports a failing catalog.
    }
  }

  private handleMetaContext(option: number, data: Uint8Array): void {
    const listing = option === NBD_OPT_LIST_META_CONTEXT;
    // SET replaces the selection even when it fails (spec), so forget the old one first.
    if (!listing) this.metaContextExport = undefined;
    if (!this.structuredReplies) {
      return this.refuse(option, NBD_REP_ERR_INVALID, "negotiate NBD_OPT_STRUCTURED_REPLY before meta contexts");
    }
    const request = decodeMetaContextRequest(data);
    if (request instanceof ShoalError) return this.refuse(option, NBD_REP_ERR_INVALID, request.message);
    const device = this.openExport(request.exportName);
    if (device instanceof ShoalError) return this.refuse(option, NBD_REP_ERR_UNKNOWN, device.message);
    const matched = listing
      ? request.queries.length === 0 || request.queries.some((query) => queryMatchesBaseAllocation(query, true))
      : request.queries.some((query) => queryMatchesBaseAllocation(query, false));
    if (matched) {
      const contextId = listing ? 0 : BASE_ALLOCATION_CONTEXT_ID;
      this.reply(option, NBD_REP_META_CONTEXT, encodeMetaContextPayload(contextId, BASE_ALLOCATION_CONTEXT));
      if (!listing) this.metaContextExport = request.exportName;
    }
    this.reply(option, NBD_REP_ACK);
  }

  private enterTransmission(exportName: string, device: BlockDevice): void {
    this.connection.enterTransmission(exportName, device, {
      sizeBytes: device.sizeBytes,
      readOnly: device.readOnly,
      structuredReplies: this.structuredReplies,
      blockStatusAllowed: this.structuredReplies && this.metaContextExport === exportName,
    });
  }
}

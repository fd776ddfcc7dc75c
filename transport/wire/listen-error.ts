// Why a listener could not open, in words: Bun says only "Failed to listen at 127.0.0.1" (the
// mesh and NBD) or "Is port N in use?" (HTTP), without the port or the reason.
import { asShoalError, ShoalError } from "../../core/errors.ts";

const REASONS: Record<string, string> = {
  EADDRINUSE: "the address is in use",
  EADDRNOTAVAIL: "no interface of this machine has that address",
  EACCES: "permission denied (ports below 1024 need privileges)",
};

/** A bad address is the operator's to fix: BAD_ARGUMENT (exit 2), naming what and where. */
export function listenError(what: string, host: string, port: number, err: unknown): ShoalError {
  const code = (err as { code?: unknown } | null)?.code;
  const reason = (typeof code === "string" && REASONS[code]) || asShoalError(err).message;
  return new ShoalError("BAD_ARGUMENT", `cannot listen for ${what} on ${host}:${port}: ${reason}`);
}

// Logs and progress go to stderr so that stdout carries only data (exports, --json documents).
// `human` lines are for people: a UTC timestamp, the level, the message. `json` writes one object
// per line for log collectors, with the subject of the line as fields (node, peer, volume, ...).
import { ShoalError } from "../core/errors.ts";
import type { LogFields } from "../transport/mesh.ts";
import { colourFor } from "./_usage.ts";

export type LogFormat = "human" | "json";
type Level = "error" | "warn" | "info";

export function parseLogFormat(text: string): LogFormat {
  if (text === "human" || text === "json") return text;
  throw new ShoalError("BAD_ARGUMENT", `'${text}' is not a log format; use human or json`);
}

export interface Log {
  /** Fields every line carries (a node adds its id once it knows it). */
  readonly fields: LogFields;
  error(message: string, fields?: LogFields): void;
  warn(message: string, fields?: LogFields): void;
  info(message: string, fields?: LogFields): void;
}

// SHOAL_LOG_LEVEL as in consola, which this replaced: 0 errors, 1 and 2 add warnings, 3 (default) adds info.
const LEVEL_RANK: Record<Level, number> = { error: 0, warn: 1, info: 3 };
const LEVEL_COLOUR: Record<Level, number> = { error: 31, warn: 33, info: 36 };

export function createLog(tag?: string, format: LogFormat = "human", fields: LogFields = {}): Log {
  const threshold = Number(process.env.SHOAL_LOG_LEVEL ?? 3);
  const colour = format === "human" && colourFor(process.stderr);
  const write = (level: Level, message: string, lineFields: LogFields | undefined) => {
    if (LEVEL_RANK[level] > threshold) return;
    const time = new Date().toISOString();
    if (format === "json") {
      process.stderr.write(`${JSON.stringify({ time, level, msg: message, ...(tag ? { tag } : {}), ...log.fields, ...lineFields })}\n`);
      return;
    }
    const label = level.toUpperCase().padEnd(5);
    process.stderr.write(`${time} ${colour ? `\u001b[${LEVEL_COLOUR[level]}m${label}\u001b[0m` : label} ${tag ? `[${tag}] ` : ""}${message}\n`);
  };
  const log: Log = {
    fields: { ...fields },
    error: (message, lineFields) => write("error", message, lineFields),
    warn: (message, lineFields) => write("warn", message, lineFields),
    info: (message, lineFields) => write("info", message, lineFields),
  };
  return log;
}

// Logs and progress go to stderr so that stdout carries only data (exports, --json documents).
// `human` lines are for people: a UTC timestamp, the level, the message. `json` writes one object
// per line for log collectors, with the subject of the line as fields (node, peer, volume, ...).
// consola keeps the levels (SHOAL_LOG_LEVEL: 0 errors, 1 and 2 add warnings, 3, the default,
// adds info) and the tags; the one reporter below decides what a line looks like.
import { createConsola, type ConsolaReporter, type LogObject } from "consola";
import { ShoalError } from "../core/errors.ts";
import type { LogFields } from "../transport/mesh/mesh.ts";
import { colourFor } from "./_usage.ts";

export type LogFormat = "human" | "json";

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

const LEVEL_COLOUR: Record<string, number> = { error: 31, warn: 33, info: 36 };

/** One line per entry; the entry's arguments are the message and, optionally, its fields. */
function reporter(format: LogFormat, fields: LogFields): ConsolaReporter {
  const colour = format === "human" && colourFor(process.stderr);
  return {
    log(entry: LogObject) {
      const [message, lineFields] = entry.args as [string, LogFields | undefined];
      const time = entry.date.toISOString();
      const level = entry.type === "log" ? "info" : entry.type;
      if (format === "json") {
        process.stderr.write(`${JSON.stringify({ time, level, msg: String(message), ...(entry.tag ? { tag: entry.tag } : {}), ...fields, ...lineFields })}\n`);
        return;
      }
      const label = level.toUpperCase().padEnd(5);
      const shown = colour && LEVEL_COLOUR[level] ? `\u001b[${LEVEL_COLOUR[level]}m${label}\u001b[0m` : label;
      process.stderr.write(`${time} ${shown} ${entry.tag ? `[${entry.tag}] ` : ""}${message}\n`);
    },
  };
}

export function createLog(tag?: string, format: LogFormat = "human", fields: LogFields = {}): Log {
  const ownFields: LogFields = { ...fields };
  const consola = createConsola({ level: Number(process.env.SHOAL_LOG_LEVEL ?? 3), reporters: [reporter(format, ownFields)], throttle: 0 });
  const tagged = tag ? consola.withTag(tag) : consola;
  const line = (level: "error" | "warn" | "info") => (message: string, lineFields?: LogFields) =>
    lineFields === undefined ? tagged[level](message) : tagged[level](message, lineFields);
  return { fields: ownFields, error: line("error"), warn: line("warn"), info: line("info") };
}

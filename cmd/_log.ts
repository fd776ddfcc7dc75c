// Logs and progress go to stderr so that stdout carries only data (exports, --json documents).
// `human` lines are for people; `json` writes one JSON object per line for log collectors.
import { createConsola, type ConsolaInstance, type ConsolaReporter } from "consola";
import { ShoalError } from "../core/errors.ts";

export type LogFormat = "human" | "json";

export function parseLogFormat(text: string): LogFormat {
  if (text === "human" || text === "json") return text;
  throw new ShoalError("BAD_ARGUMENT", `'${text}' is not a log format; use human or json`);
}

/** {"time":"2026-…Z","level":"warn","msg":"…","tag":"…"} per line. */
const jsonReporter: ConsolaReporter = {
  log(entry) {
    const line: Record<string, unknown> = { time: entry.date.toISOString(), level: entry.type, msg: entry.args.map(String).join(" ") };
    if (entry.tag) line.tag = entry.tag;
    process.stderr.write(`${JSON.stringify(line)}\n`);
  },
};

export function createLog(tag?: string, format: LogFormat = "human"): ConsolaInstance {
  const level = Number(process.env.SHOAL_LOG_LEVEL ?? 3);
  const log =
    format === "json"
      ? createConsola({ level, reporters: [jsonReporter], throttle: 0 })
      : createConsola({ stdout: process.stderr, stderr: process.stderr, level });
  return tag ? log.withTag(tag) : log;
}

// Logs and progress go to stderr so that stdout carries only data (exports, --json documents).
import { createConsola, type ConsolaInstance } from "consola";

export function createLog(tag?: string): ConsolaInstance {
  const log = createConsola({ stdout: process.stderr, stderr: process.stderr, level: Number(process.env.SHOAL_LOG_LEVEL ?? 3) });
  return tag ? log.withTag(tag) : log;
}

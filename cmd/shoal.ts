#!/usr/bin/env bun
// The `shoal` binary: subcommands, and one place that turns errors into a line on stderr and
// an exit code a script can branch on.
import { defineCommand, runCommand, showUsage } from "citty";
import { asShoalError, ShoalError } from "../core/errors.ts";
import { SHOAL_VERSION } from "./_node-runtime.ts";
import { guardProcessOutput } from "./_output.ts";
import archive from "./archive.ts";
import node from "./node.ts";
import route from "./route.ts";
import snap from "./snap.ts";
import tls from "./tls.ts";
import volume from "./volume.ts";

const main = defineCommand({
  meta: { name: "shoal", version: SHOAL_VERSION, description: "Distributed block storage with crash-consistent snapshots, served over NBD" },
  subCommands: { node, volume, route, snap, archive, tls },
});

async function run(rawArgs: string[]): Promise<void> {
  // A storage node's only output is its log: it keeps serving if that breaks, as before.
  if (rawArgs[0] !== "node") guardProcessOutput();
  if (rawArgs.length === 1 && (rawArgs[0] === "--version" || rawArgs[0] === "-v")) {
    process.stdout.write(`${SHOAL_VERSION}\n`);
    return;
  }
  if (rawArgs.length === 0 || rawArgs.includes("--help") || rawArgs.includes("-h")) {
    await showUsage(...(await resolveForUsage(rawArgs)));
    if (rawArgs.length === 0) process.exit(2);
    return;
  }
  try {
    await runCommand(main, { rawArgs });
  } catch (err) {
    if (err instanceof Error && err.name === "CLIError") {
      process.stderr.write(`shoal: ${err.message}; see 'shoal ${rawArgs.filter((a) => !a.startsWith("-")).slice(0, 2).join(" ")} --help'\n`);
      process.exit(2);
    }
    const error = asShoalError(err);
    process.stderr.write(`shoal: ${error.message}${error.code === "INTERNAL" ? "" : ` [${error.code}]`}\n`);
    process.exit(error instanceof ShoalError ? error.exitCode : 1);
  }
}

/** The deepest subcommand named on the command line, for --help. */
async function resolveForUsage(rawArgs: string[]): Promise<[typeof main, typeof main?]> {
  let command = main;
  let parent: typeof main | undefined;
  for (const word of rawArgs) {
    if (word.startsWith("-")) break;
    const subCommands = (command.subCommands ?? {}) as Record<string, typeof main>;
    const next = subCommands[word];
    if (!next) break;
    parent = command;
    command = next;
  }
  return parent ? [command, parent] : [command];
}

await run(process.argv.slice(2));

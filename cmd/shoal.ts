#!/usr/bin/env bun
// The `shoal` binary: subcommands, and one place that turns errors into a line on stderr and
// an exit code a script can branch on.
import { defineCommand, runCommand } from "citty";
import { asShoalError, ShoalError } from "../core/errors.ts";
import { kebab } from "./_cli.ts";
import { SHOAL_VERSION } from "../transport/node/version.ts";
import { colourFor, PROGRAM, renderUsage, resolveCommand, stripAnsi } from "./_usage.ts";
import { exitWithErrorLine, guardProcessOutput } from "./_output.ts";

const main = defineCommand({
  meta: { name: PROGRAM, version: SHOAL_VERSION, description: "Distributed block storage with crash-consistent snapshots, served over NBD" },
  // Loaded when named: `shoal volume list` reads neither the archive code nor the TLS authority's.
  subCommands: {
    node: () => import("./node.ts").then((module) => module.default),
    volume: () => import("./volume.ts").then((module) => module.default),
    route: () => import("./route.ts").then((module) => module.default),
    snap: () => import("./snap.ts").then((module) => module.default),
    archive: () => import("./archive.ts").then((module) => module.default),
    tls: () => import("./tls.ts").then((module) => module.default),
  },
});

async function run(rawArgs: string[]): Promise<void> {
  // A storage node's only output is its log: it keeps serving if that breaks, as before.
  if (rawArgs[0] !== "node") guardProcessOutput({ json: rawArgs.includes("--json") });
  if (rawArgs.length === 1 && (rawArgs[0] === "--version" || rawArgs[0] === "-v")) {
    process.stdout.write(`${SHOAL_VERSION}\n`);
    return;
  }
  const { command, path } = await resolveCommand(main, rawArgs);
  if (rawArgs.includes("--help") || rawArgs.includes("-h")) {
    process.stdout.write(await renderUsage(command, path, colourFor(process.stdout)));
    return;
  }
  // A command group without its command ("shoal", "shoal volume"): the usage is the answer, as an error.
  if (command.subCommands && path.length === rawArgs.length + 1) {
    process.stderr.write(await renderUsage(command, path, colourFor(process.stderr)));
    process.exit(2);
  }
  try {
    await runCommand(main, { rawArgs });
  } catch (err) {
    const json = rawArgs.includes("--json");
    if (err instanceof Error && err.name === "CLIError") {
      // citty names flags camelCase and colours some words; say it as the user typed it.
      const message = stripAnsi(err.message).replace(/--([a-z]+[A-Z][A-Za-z]*)/g, (_, name: string) => `--${kebab(name)}`);
      fail(json, "BAD_ARGUMENT", json ? message : `${message}; see '${path.join(" ")} --help'`, 2);
    }
    const error = asShoalError(err);
    const message = error.message.replace(/; see --help$/, `; see '${path.join(" ")} --help'`);
    fail(json, error.code, message, error instanceof ShoalError ? error.exitCode : 1);
  }
}

/** One line on stderr: text for people, or {code, message} under --json for scripts. */
function fail(json: boolean, code: string, message: string, exitCode: number): never {
  if (json) guardProcessOutput({ json });
  exitWithErrorLine(code, message, exitCode);
}

await run(process.argv.slice(2));

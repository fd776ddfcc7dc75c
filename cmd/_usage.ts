// `--help` text, rendered here rather than by citty: citty prints flags by their camelCase
// definition names (`--pageSize`) and only the last command word, while people type the
// kebab-case flags the README shows and need the whole command line (`shoal volume create`).
import type { ArgDef, CommandDef, Resolvable } from "citty";
import { kebab } from "./_cli.ts";

export const PROGRAM = "shoal";

// Any command, whatever its args: usage only reads their definitions.
type AnyCommand = CommandDef<any>;

/** Colour only for a person at a terminal, and never when NO_COLOR is set (no-color.org). */
export function colourFor(stream: { isTTY?: boolean }): boolean {
  return stream.isTTY === true && !process.env.NO_COLOR && process.env.TERM !== "dumb";
}

const ANSI_ESCAPE = /\u001b\[[0-9;]*m/g;

/** citty colours some of its own error messages; errors go to logs and pipes without them. */
export function stripAnsi(text: string): string {
  return text.replace(ANSI_ESCAPE, "");
}

/** A subcommand given as a loader (loaded only when named) or as the command itself. */
async function resolve<T>(value: Resolvable<T>): Promise<T> {
  return typeof value === "function" ? await (value as () => T | Promise<T>)() : await value;
}

async function subCommandsOf(command: AnyCommand): Promise<Record<string, Resolvable<AnyCommand>>> {
  return ((await resolve(command.subCommands ?? {})) ?? {}) as Record<string, Resolvable<AnyCommand>>;
}

/** The command named by the leading words of `rawArgs`, and those words ("shoal volume create"). */
export async function resolveCommand(root: AnyCommand, rawArgs: string[]): Promise<{ command: AnyCommand; path: string[] }> {
  let command = root;
  const path = [PROGRAM];
  for (const word of rawArgs) {
    if (word.startsWith("-")) break;
    const next = (await subCommandsOf(command))[word];
    if (!next) break;
    command = await resolve(next);
    path.push(word);
  }
  return { command, path };
}

/** The usage of `command`; its subcommands are loaded to show what each does. */
export async function renderUsage(command: AnyCommand, path: string[], colour: boolean): Promise<string> {
  const subCommands = await Promise.all(Object.entries(await subCommandsOf(command)).map(async ([word, sub]) => [word, await resolve(sub)] as const));
  return usageText(command, subCommands, path, colour);
}

function usageText(command: AnyCommand, subCommands: (readonly [string, AnyCommand])[], path: string[], colour: boolean): string {
  const paint = (code: number) => (text: string) => (colour ? `\u001b[${code}m${text}\u001b[0m` : text);
  const bold = paint(1);
  const cyan = paint(36);
  const name = path.join(" ");
  const meta = (command.meta ?? {}) as { description?: string; version?: string };
  const defs = Object.entries((command.args ?? {}) as Record<string, ArgDef>);
  const positionals = defs.filter(([, def]) => def.type === "positional");
  const flags = defs.filter(([, def]) => def.type !== "positional");

  const synopsis = [name];
  if (subCommands.length > 0) synopsis.push("COMMAND");
  for (const [argName, def] of positionals) synopsis.push(isRequired(def) ? argName.toUpperCase() : `[${argName.toUpperCase()}]`);
  for (const [argName, def] of flags) if (isRequired(def)) synopsis.push(`--${kebab(argName)} ${valueHint(argName, def)}`);
  synopsis.push("[options]");

  const lines = [meta.description ?? "", "", `${bold("Usage:")} ${cyan(synopsis.join(" "))}`];
  if (positionals.length > 0) {
    lines.push("", bold("Arguments:"));
    lines.push(...columns(positionals.map(([argName, def]) => [argName.toUpperCase(), describe(def)]), cyan));
  }
  if (subCommands.length > 0) {
    lines.push("", bold("Commands:"));
    lines.push(...columns(subCommands.map(([word, sub]) => [word, (sub.meta as { description?: string } | undefined)?.description ?? ""]), cyan));
  }
  const flagRows = flags.flatMap(([argName, def]) => flagRowsOf(argName, def));
  if (path.length === 1) flagRows.push(["--version", "print the version and exit"]);
  flagRows.push(["-h, --help", "show this help"]);
  lines.push("", bold("Options:"), ...columns(flagRows, cyan));
  if (subCommands.length > 0) lines.push("", `Run '${name} COMMAND --help' for a command's arguments and options.`);
  return `${lines.join("\n")}\n`;
}

function flagRowsOf(argName: string, def: ArgDef): [string, string][] {
  const aliases = [(def as { alias?: string | string[] }).alias ?? []].flat().map((alias) => `-${alias}, `);
  const hint = def.type === "boolean" ? "" : ` ${valueHint(argName, def)}`;
  // A boolean that defaults to true is there to be turned off.
  const negatable = def.type === "boolean" && def.default === true ? "[no-]" : "";
  return [[`${aliases.join("")}--${negatable}${kebab(argName)}${hint}`, describe(def)]];
}

function valueHint(argName: string, def: ArgDef): string {
  return (def as { valueHint?: string }).valueHint ?? kebab(argName).toUpperCase().replace(/-/g, "_");
}

function isRequired(def: ArgDef): boolean {
  return def.type === "positional" ? def.required !== false && def.default === undefined : def.required === true && def.default === undefined;
}

function describe(def: ArgDef): string {
  const parts = [def.description ?? ""];
  if (isRequired(def)) parts.push("(required)");
  if (def.default !== undefined && def.type !== "boolean") parts.push(`(default ${String(def.default)})`);
  return parts.filter(Boolean).join(" ");
}

function columns(rows: [string, string][], paintLeft: (text: string) => string): string[] {
  const width = Math.max(...rows.map(([left]) => left.length));
  return rows.map(([left, right]) => `  ${paintLeft(left.padEnd(width))}  ${right}`.trimEnd());
}

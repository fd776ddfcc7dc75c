// `--config FILE` (or $SHOAL_CONFIG): a TOML file whose keys are the command's own flags, kebab-case,
// so one name works in both places. Flags given on the command line win over the file, and the
// file wins over the defaults. A key that is not a flag is refused: a typo must not pass silently.
import * as fs from "node:fs";
import type { ArgDef, ArgsDef } from "citty";
import { ShoalError } from "../core/errors.ts";
import { kebab } from "./_cli.ts";

export type Settings = Record<string, string | boolean | undefined>;

/**
 * The flag definitions as citty should see them: without defaults, so that a flag left out reads
 * as undefined and the config file can fill it. The default moves into the help text.
 */
export function withoutDefaults<T extends ArgsDef>(defs: T): T {
  const stripped: Record<string, ArgDef> = {};
  for (const [name, def] of Object.entries(defs)) {
    const { default: fallback, ...rest } = def as ArgDef & { default?: unknown };
    stripped[name] = fallback === undefined ? def : ({ ...rest, description: `${rest.description ?? ""} (default ${String(fallback)})` } as ArgDef);
  }
  return stripped as T;
}

/**
 * Command line, then the config file, then each flag's default. `configPath` (from --config, or
 * $SHOAL_CONFIG) may be undefined: then only the defaults fill in.
 */
export function resolveSettings(defs: ArgsDef, given: Settings, configPath: string | undefined): Settings {
  const fromFile = configPath ? readConfig(configPath, defs) : {};
  const settings: Settings = {};
  for (const [name, def] of Object.entries(defs)) {
    if (def.type === "positional") continue;
    settings[name] = given[name] ?? fromFile[name] ?? ((def as { default?: string | boolean }).default);
  }
  return settings;
}

/** The file's keys as flag names (camelCase, as citty hands them over), checked against `defs`. */
export function readConfig(configPath: string, defs: ArgsDef): Settings {
  let text: string;
  try {
    text = fs.readFileSync(configPath, "utf8");
  } catch (err) {
    throw new ShoalError("BAD_ARGUMENT", `cannot read config file '${configPath}': ${(err as Error).message}`);
  }
  let parsed: Record<string, unknown>;
  try {
    parsed = Bun.TOML.parse(text) as Record<string, unknown>;
  } catch (err) {
    throw new ShoalError("BAD_ARGUMENT", `config file '${configPath}' is not valid TOML: ${(err as Error).message}`);
  }
  const byKey = new Map<string, [string, ArgDef]>();
  for (const [name, def] of Object.entries(defs)) {
    if (def.type !== "positional" && name !== "config") byKey.set(kebab(name), [name, def]);
  }
  const settings: Settings = {};
  for (const [key, value] of Object.entries(parsed)) {
    const known = byKey.get(key);
    if (!known) {
      const keys = [...byKey.keys()].join(", ");
      throw new ShoalError("BAD_ARGUMENT", `config file '${configPath}': unknown key '${key}'; the keys are the flags: ${keys}`);
    }
    const [name, def] = known;
    settings[name] = configValue(configPath, key, value, def);
  }
  return settings;
}

function configValue(configPath: string, key: string, value: unknown, def: ArgDef): string | boolean {
  if (def.type === "boolean") {
    if (typeof value !== "boolean") throw new ShoalError("BAD_ARGUMENT", `config file '${configPath}': '${key}' must be true or false`);
    return value;
  }
  // Numbers are accepted where a flag takes text that is a number (a port-less duration "250").
  if (typeof value === "string") return value;
  if (typeof value === "number" && Number.isFinite(value)) return String(value);
  throw new ShoalError("BAD_ARGUMENT", `config file '${configPath}': '${key}' must be a string, like the flag --${key}`);
}

// Typed arguments of mesh operations (admin and peer): a schema per operation says each
// argument's shape; what arrives is read against it, so a missing or mistyped argument is a
// BAD_ARGUMENT naming it and the operation's code sees typed values, never String(undefined).
import { ShoalError } from "../../core/errors.ts";
import type { FrameHeader } from "../mesh/frame.ts";

/** One argument: how to read it off the wire, and whether it may be left out (undefined or null). */
export interface Field<T, Optional extends boolean> {
  readonly optional: Optional;
  read(value: unknown, name: string, op: string): T;
}

export type Schema = Record<string, Field<unknown, boolean>>;
type ValueOf<F> = F extends Field<infer T, boolean> ? T : never;
type RequiredKeys<S> = { [K in keyof S]: S[K] extends Field<unknown, false> ? K : never }[keyof S];
type OptionalKeys<S> = { [K in keyof S]: S[K] extends Field<unknown, false> ? never : K }[keyof S];
type Flatten<T> = { [K in keyof T]: T[K] };
/** The arguments a schema describes, as a TypeScript type (optional fields are optional keys). */
export type ArgsOfSchema<S extends Schema> = Flatten<{ [K in RequiredKeys<S>]: ValueOf<S[K]> } & { [K in OptionalKeys<S>]?: ValueOf<S[K]> }>;

function bad(op: string, name: string, wanted: string, value: unknown): never {
  const given = value === undefined || value === null ? "missing" : `${typeof value} ${JSON.stringify(value)?.slice(0, 60)}`;
  throw new ShoalError("BAD_ARGUMENT", `'${op}': argument '${name}' must be ${wanted} (${given})`);
}

function field<T>(wanted: string, accepts: (value: unknown) => value is T): Field<T, false> {
  return {
    optional: false,
    read: (value, name, op) => (accepts(value) ? value : bad(op, name, wanted, value)),
  };
}

const isText = (value: unknown): value is string => typeof value === "string" && value !== "";
const isCount = (value: unknown): value is number => typeof value === "number" && Number.isSafeInteger(value) && value >= 0;
const isFlag = (value: unknown): value is boolean => typeof value === "boolean";
const isTexts = (value: unknown): value is string[] => Array.isArray(value) && value.every(isText);
const isCounts = (value: unknown): value is number[] => Array.isArray(value) && value.every(isCount);
const isBytes = (value: unknown): value is Uint8Array => value instanceof Uint8Array;

/** A non-empty string. */
export const text = () => field("a non-empty string", isText);
/** A whole number >= 0 (sizes, offsets, page numbers, timeouts). */
export const count = () => field("a whole number >= 0", isCount);
export const flag = () => field("true or false", isFlag);
/** A list of non-empty strings. */
export const texts = () => field("a list of non-empty strings", isTexts);
/** A list of whole numbers >= 0. */
export const counts = () => field("a list of whole numbers >= 0", isCounts);
/** Raw bytes (msgpack bin). */
export const bytes = () => field("bytes", isBytes);
export function oneOf<const T extends string>(...values: T[]): Field<T, false> {
  return field(`one of ${values.join(", ")}`, (value): value is T => values.includes(value as T));
}
export function optional<T>(inner: Field<T, false>): Field<T | undefined, true> {
  return {
    optional: true,
    read: (value, name, op) => (value === undefined || value === null ? undefined : inner.read(value, name, op)),
  };
}
/** A list of maps, each read against `schema` (a bad element is named by its index). */
export function listOf<S extends Schema>(schema: S): Field<ArgsOfSchema<S>[], false> {
  return {
    optional: false,
    read: (value, name, op) => {
      if (!Array.isArray(value)) return bad(op, name, "a list", value);
      return value.map((element, index) => {
        if (typeof element !== "object" || element === null || Array.isArray(element)) return bad(op, `${name}[${index}]`, "a map", element);
        return readFields(op, schema, element as FrameHeader, `${name}[${index}].`);
      });
    },
  };
}

function readFields<S extends Schema>(op: string, schema: S, args: FrameHeader, prefix = ""): ArgsOfSchema<S> {
  const result: Record<string, unknown> = {};
  for (const [name, spec] of Object.entries(schema)) {
    const value = spec.read(args[name], prefix + name, op);
    if (value !== undefined) result[name] = value;
  }
  return result as ArgsOfSchema<S>;
}

/**
 * The arguments of `op` as `schema` types them, or BAD_ARGUMENT naming the one missing or of the
 * wrong type. `unknown: "refuse"` also refuses an argument the schema does not name (a typo in a
 * client must not be ignored silently); peers ignore them instead, so a newer member may send more.
 */
export function readOpArgs<S extends Schema>(op: string, schema: S, args: FrameHeader, unknown: "refuse" | "ignore"): ArgsOfSchema<S> {
  const result = readFields(op, schema, args);
  if (unknown === "refuse") {
    for (const name of Object.keys(args)) {
      if (!Object.hasOwn(schema, name)) throw new ShoalError("BAD_ARGUMENT", `'${op}' takes no argument '${name}'`);
    }
  }
  return result;
}

// The admin operations a node answers, in one table: each name with the shape of its arguments.
// The CLI sends only what the table types allow; the node checks what arrives against the same
// table, so a missing or mistyped argument is a BAD_ARGUMENT naming it, never the string "undefined".
import { ShoalError } from "../../core/errors.ts";
import type { FrameHeader } from "../mesh/frame.ts";

/** One argument: how to read it off the wire, and whether it may be left out (undefined or null). */
interface Field<T, Optional extends boolean> {
  readonly optional: Optional;
  read(value: unknown, name: string, op: string): T;
}

type Schema = Record<string, Field<unknown, boolean>>;
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

/** A non-empty string. */
const text = () => field("a non-empty string", isText);
/** A whole number >= 0 (sizes, timeouts). */
const count = () => field("a whole number >= 0", isCount);
const flag = () => field("true or false", isFlag);
/** A list of non-empty strings. */
const texts = () => field("a list of non-empty strings", isTexts);
function oneOf<const T extends string>(...values: T[]): Field<T, false> {
  return field(`one of ${values.join(", ")}`, (value): value is T => values.includes(value as T));
}
function optional<T>(inner: Field<T, false>): Field<T | undefined, true> {
  return {
    optional: true,
    read: (value, name, op) => (value === undefined || value === null ? undefined : inner.read(value, name, op)),
  };
}

const snapshotRequest = { volumes: texts(), name: text(), mode: optional(oneOf("hold", "timestamp")), holdTimeoutMs: optional(count()) };

/** Every admin operation, by name, with its arguments. */
export const ADMIN_OPS = {
  "admin.node.info": {},
  "admin.volume.create": { name: text(), sizeBytes: count(), pageSizeBytes: optional(count()), nodes: optional(texts()), restoring: optional(flag()) },
  "admin.volume.list": {},
  "admin.volume.info": { name: text() },
  "admin.volume.restoring": { name: text(), restoring: flag() },
  "admin.volume.delete": { name: text() },
  "admin.volume.changedSince": { volume: text(), snapshot: text() },
  "admin.route.nodes": {},
  /** `usage: false` skips asking every owner for its bytes: bulk jobs want only the runs. */
  "admin.route.show": { volume: text(), usage: optional(flag()) },
  "admin.route.move": { volume: text(), pages: text(), to: text(), dryRun: optional(flag()) },
  "admin.route.rebalance": { volume: text(), nodes: optional(texts()), dryRun: optional(flag()) },
  "admin.route.drain": { node: text(), dryRun: optional(flag()) },
  "admin.route.status": { moveId: text() },
  "admin.route.forget": { node: text() },
  "admin.snap.create": snapshotRequest,
  "admin.snap.prepare": snapshotRequest,
  "admin.snap.take": { name: text() },
  "admin.snap.release": { name: text() },
  "admin.snap.list": { volume: optional(text()) },
  "admin.snap.delete": { volume: text(), name: text() },
  "admin.snap.rollback": { volume: text(), name: text() },
  "admin.snap.clone": { volume: text(), name: text(), target: text() },
  "admin.archive.plan": { volume: text(), snapshot: text(), since: optional(text()) },
} as const satisfies Record<string, Schema>;

export type AdminOp = keyof typeof ADMIN_OPS;
export type AdminArgs<Op extends AdminOp> = ArgsOfSchema<(typeof ADMIN_OPS)[Op]>;
/** What every admin operation answers: a msgpack map (each command reads the fields it prints). */
export type AdminResult = FrameHeader;

export function isAdminOp(op: string): op is AdminOp {
  return Object.hasOwn(ADMIN_OPS, op);
}

/**
 * The arguments of `op` as the table types them, or BAD_ARGUMENT: a field missing, of the wrong
 * type, or not in the table (a typo in a client must not be ignored silently).
 */
export function readAdminArgs<Op extends AdminOp>(op: Op, args: FrameHeader): AdminArgs<Op> {
  const schema: Schema = ADMIN_OPS[op];
  const result: Record<string, unknown> = {};
  for (const [name, spec] of Object.entries(schema)) {
    const value = spec.read(args[name], name, op);
    if (value !== undefined) result[name] = value;
  }
  for (const name of Object.keys(args)) {
    if (!Object.hasOwn(schema, name)) throw new ShoalError("BAD_ARGUMENT", `'${op}' takes no argument '${name}'`);
  }
  return result as AdminArgs<Op>;
}

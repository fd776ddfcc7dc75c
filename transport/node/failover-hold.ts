// What the entry node of a client's request to a replicated volume does while a replica set
// changes under it: a request that fails because a copy is down, timed out or refused its routing
// version (STALE_ROUTE), or that is still waiting when a newer routing version arrives, is held
// and sent again by the table current then, instead of answering the client an error. The hold
// is bounded (a few suspicion timeouts): past it the request fails with EIO and a log line.
import { asShoalError, ShoalError } from "../../core/errors.ts";
import type { Group } from "../mesh/group.ts";
import type { MeshLog } from "../mesh/mesh.ts";

/** Failures a set change cures: the copy that caused them leaves the set, or the sender learns the new table. */
const CURED_BY_NEWER_ROUTING = new Set(["NODE_DOWN", "TIMEOUT", "STALE_ROUTE", "NOT_OWNER", "NOT_READY"]);
/** How often a held request looks for a newer routing version (and tries again without one: a joining copy becomes ready at the same version). */
const RECHECK_MS = 100;
const RETRY_WITHOUT_NEWER_MS = 300;

export class FailoverHold {
  constructor(
    private readonly group: Group,
    private readonly log: MeshLog,
    /** Longest a request is held across set changes before it fails. */
    private readonly limitMs: number,
  ) {}

  /**
   * Runs `attempt` (which routes by the volume's current record) until it succeeds, or fails with
   * an error a set change does not cure, or the hold limit passes. An attempt still waiting when
   * the routing version moves is abandoned (its answer ignored) and the request sent again.
   */
  async run<T>(uid: string, what: string, attempt: () => Promise<T> | T): Promise<T> {
    const held = new HeldTime();
    for (let tries = 1; ; tries++) {
      const version = this.versionOf(uid);
      try {
        const result = attempt();
        return result instanceof Promise ? await this.unlessRerouted(result, uid, version, held) : result;
      } catch (err) {
        const error = asShoalError(err);
        if (!CURED_BY_NEWER_ROUTING.has(error.code) && !(err instanceof Rerouted)) throw err;
        const heldMs = held.tick();
        if (heldMs >= this.limitMs) {
          this.log.warn(`${what}: held ${heldMs} ms over ${tries} tries and no replica set took it (${error.message}); failing it`);
          throw new ShoalError("IO_ERROR", `${what} found no replica set to take it within ${this.limitMs} ms: ${error.message}`);
        }
        if (!(err instanceof Rerouted)) await this.newerOr(uid, version, RETRY_WITHOUT_NEWER_MS, held);
      }
    }
  }

  /** Whether the volume's routing moves past `version` within the hold limit. */
  async newerWithin(uid: string, version: number): Promise<boolean> {
    await this.newerOr(uid, version, this.limitMs, new HeldTime());
    return this.versionOf(uid) > version;
  }

  private versionOf(uid: string): number {
    return this.group.volumeByUid(uid)?.routing.version ?? -1;
  }

  /** The attempt's answer, or Rerouted once the routing version moves past `version` (or the hold limit passes). */
  private unlessRerouted<T>(pending: Promise<T>, uid: string, version: number, held: HeldTime): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const timer = setInterval(() => {
        if (this.versionOf(uid) === version && held.tick() < this.limitMs) return;
        clearInterval(timer);
        reject(this.versionOf(uid) === version ? new ShoalError("TIMEOUT", "no answer from the replica set") : new Rerouted("STALE_ROUTE", "routing changed"));
      }, RECHECK_MS);
      pending.then(
        (value) => {
          clearInterval(timer);
          resolve(value);
        },
        (err) => {
          clearInterval(timer);
          reject(err);
        },
      );
    });
  }

  /** Resolves when the routing version moves past `version`, or after `waitMs` (never past the hold limit). */
  private newerOr(uid: string, version: number, waitMs: number, held: HeldTime): Promise<void> {
    const untilMs = Math.min(held.tick() + waitMs, this.limitMs);
    return new Promise<void>((resolve) => {
      const timer = setInterval(() => {
        if (this.versionOf(uid) === version && held.tick() < untilMs) return;
        clearInterval(timer);
        resolve();
      }, RECHECK_MS / 4);
    });
  }
}

/**
 * How long a request has been held while this node ran: a gap between checks longer than a few
 * of them means the process itself was stopped (SIGSTOP, a VM pause) and is not held against the
 * request, which would otherwise fail the moment the node resumes, before it could learn the sets.
 */
class HeldTime {
  private lastMs = Date.now();
  private heldMs = 0;

  tick(): number {
    const nowMs = Date.now();
    this.heldMs += Math.min(nowMs - this.lastMs, RECHECK_MS * 5);
    this.lastMs = nowMs;
    return this.heldMs;
  }
}

/** The attempt was abandoned for a newer routing version: try again at once. */
class Rerouted extends ShoalError {}

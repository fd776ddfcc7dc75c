// One step of a page move, as the source node runs it: a pure state machine. Ownership changes
// hands at exactly one point, the source's durable commit of the new routing table, and only
// after the target holds the pages durably; so a crash at any step leaves every page with one
// owner that has its last acknowledged write:
//   quiet    wait until no snapshot involves the volume (a cut must see one owner per page)
//   copy     the pages' layers are sent to the target while clients keep using them; the
//            source notes which pages were written meanwhile
//   install  requests to the pages are frozen (queued); the pages written during the copy are
//            sent again, and the target syncs the step's pages before answering
//   commit   the new table (pages -> target) becomes durable here: the point of no return
//   publish  the target is told; once it confirmed, the source removes its copies; either way the
//            queued requests run again, routed by the new table (to the target)
// A failure before commit unfreezes the pages with nothing changed (the target's copies are
// orphans its next start removes). After commit the step always completes: a target that
// missed the publish learns the table from any member's catalog digest.
import { ShoalError, type ErrorCode } from "../errors.ts";

export interface MoveStepRequest {
  stepId: string;
  /** The volume's name (snapshots are per name) and uid (page-store layers are per uid). */
  volume: string;
  volumeUid: string;
  pages: number[];
  to: string;
  /** The routing version the step turns pages over in; the coordinator built it on the current one. */
  newVersion: number;
  nowMs: number;
}

export type MoveStepEffect =
  /** Send the pages to the target without freezing them, noting writes to them; answer onCopied / onFailed. */
  | { kind: "precopy"; to: string; pages: number[] }
  /** Stop starting client requests on these pages: queue them until `unfreeze`. */
  | { kind: "freeze"; pages: number[] }
  /** Send these pages (written during the copy) again, then have the target sync all of the step's; answer onInstalled / onFailed. */
  | { kind: "install"; to: string; pages: number[] }
  /** Make the new routing version durable here; answer with onCommitted / onFailed. */
  | { kind: "commit" }
  /** Tell the target; answer with onPublished / onFailed (the step completes either way). */
  | { kind: "publish"; to: string }
  /** Remove this node's copies of the pages (it no longer owns them). */
  | { kind: "remove"; pages: number[] }
  /** Queued requests run again, each routed by the table now current. */
  | { kind: "unfreeze"; pages: number[] }
  | { kind: "done"; ok: true; published: boolean }
  | { kind: "done"; ok: false; error: { code: ErrorCode; message: string } };

export type MoveStepPhase = "quiet" | "copy" | "install" | "commit" | "publish" | "done";

export interface MoveStepConfig {
  /** How long a step waits for snapshots of the volume to finish before giving up. */
  quietTimeoutMs: number;
  /** How long the pages may stay frozen waiting for the target. */
  installTimeoutMs: number;
}

export const DEFAULT_MOVE_STEP_CONFIG: MoveStepConfig = { quietTimeoutMs: 30_000, installTimeoutMs: 30_000 };

export class MoveStep {
  phase: MoveStepPhase = "quiet";
  private deadlineMs: number;

  constructor(
    readonly request: MoveStepRequest,
    private readonly config: MoveStepConfig = DEFAULT_MOVE_STEP_CONFIG,
  ) {
    if (request.pages.length === 0) throw new ShoalError("BAD_ARGUMENT", "a move step needs at least one page");
    this.deadlineMs = request.nowMs + config.quietTimeoutMs;
  }

  /** No snapshot involves the volume now (and none can start until the step ends). */
  onQuiet(nowMs: number): MoveStepEffect[] {
    if (this.phase !== "quiet") return [];
    this.phase = "copy";
    this.deadlineMs = nowMs + this.config.installTimeoutMs;
    const { pages, to } = this.request;
    return [{ kind: "precopy", to, pages }];
  }

  /** The copy arrived; `written` are the pages clients wrote since it began: only they travel again, frozen. */
  onCopied(written: number[], nowMs: number): MoveStepEffect[] {
    if (this.phase !== "copy") return [];
    this.phase = "install";
    this.deadlineMs = nowMs + this.config.installTimeoutMs;
    const { pages, to } = this.request;
    const again = written.filter((page) => pages.includes(page));
    return [
      { kind: "freeze", pages },
      { kind: "install", to, pages: again },
    ];
  }

  /** The target has the pages durably. */
  onInstalled(): MoveStepEffect[] {
    if (this.phase !== "install") return [];
    this.phase = "commit";
    return [{ kind: "commit" }];
  }

  /** The new table is durable here: the target owns the pages. */
  onCommitted(): MoveStepEffect[] {
    if (this.phase !== "commit") return [];
    this.phase = "publish";
    return [{ kind: "publish", to: this.request.to }];
  }

  onPublished(): MoveStepEffect[] {
    return this.phase === "publish" ? this.finish(true) : [];
  }

  /** The effect in flight failed: before commit the step aborts; after, it completes anyway. */
  onFailed(error: { code: ErrorCode; message: string }): MoveStepEffect[] {
    switch (this.phase) {
      case "quiet":
      case "copy":
        this.phase = "done";
        return [{ kind: "done", ok: false, error }];
      case "install":
      case "commit":
        this.phase = "done";
        return [{ kind: "unfreeze", pages: this.request.pages }, { kind: "done", ok: false, error }];
      case "publish":
        return this.finish(false);
      case "done":
        return [];
    }
  }

  onTick(nowMs: number): MoveStepEffect[] {
    if ((this.phase !== "quiet" && this.phase !== "copy" && this.phase !== "install") || nowMs < this.deadlineMs) return [];
    const waitingFor = this.phase === "quiet" ? "snapshots of the volume to finish" : `node ${this.request.to} to store the pages`;
    return this.onFailed({ code: "TIMEOUT", message: `move step ${this.request.stepId} gave up waiting for ${waitingFor}` });
  }

  nextWakeAtMs(): number | undefined {
    return this.phase === "quiet" || this.phase === "copy" || this.phase === "install" ? this.deadlineMs : undefined;
  }

  /**
   * The source's copies go only once the target confirmed it knows it owns the pages: until then
   * they are the second copy of data whose owner may not know yet (it learns by digest).
   */
  private finish(published: boolean): MoveStepEffect[] {
    this.phase = "done";
    const { pages } = this.request;
    return [
      ...(published ? [{ kind: "remove" as const, pages }] : []),
      { kind: "unfreeze", pages },
      { kind: "done", ok: true, published },
    ];
  }
}

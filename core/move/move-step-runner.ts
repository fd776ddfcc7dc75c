// Carries out a move step's effects (core/move/page-move.ts) for the node (transport/move/page-mover.ts)
// and the simulation (test/sim/move-world.ts) alike: which I/O each effect starts and which event
// its completion feeds back to the step, so both run the same wiring. The host supplies the I/O
// through a small interface; no sockets, timers or clock reads here.
import type { ErrorCode } from "../errors.ts";
import type { MoveStep, MoveStepEffect } from "./page-move.ts";

export interface StepError {
  code: ErrorCode;
  message: string;
}

/** Called once the I/O is done: no argument when it succeeded. */
export type StepCompletion = (error?: StepError) => void;

export type MoveDoneEffect = Extract<MoveStepEffect, { kind: "done" }>;

export interface MoveStepHost {
  /** Queue client requests to these pages until unfreeze. */
  freeze(pages: number[]): void;
  unfreeze(pages: number[]): void;
  /** Remove this node's copies of the pages. */
  removePages(pages: number[]): void;
  /** Sends the pages unfrozen, noting writes to them; completes with the pages written meanwhile. */
  precopy(pages: number[], to: string, done: (result: { written: number[] } | { error: StepError }) => void): void;
  /** Sends the pages again and has the target make all of the step's pages durable. */
  install(pages: number[], to: string, done: StepCompletion): void;
  /** Makes the new routing version durable here (the point of no return). */
  commit(done: StepCompletion): void;
  /** Tells the target it owns the pages now. */
  publish(to: string, done: StepCompletion): void;
  /** The step is over (the outcome is in the effect). */
  done(effect: MoveDoneEffect): void;
  nowMs(): number;
  /** Before each effect; false stops the batch there (the simulation's crash between two effects). */
  beforeEffect?(effect: MoveStepEffect): boolean;
  /** After each whole batch: the step may want another wake-up time. */
  afterBatch?(): void;
}

export class MoveStepRunner {
  constructor(
    readonly step: MoveStep,
    private readonly host: MoveStepHost,
  ) {}

  run(effects: MoveStepEffect[]): void {
    const { host, step } = this;
    for (const effect of effects) {
      if (host.beforeEffect && !host.beforeEffect(effect)) return;
      switch (effect.kind) {
        case "freeze":
          host.freeze(effect.pages);
          break;
        case "precopy":
          host.precopy(effect.pages, effect.to, (result) =>
            this.run("error" in result ? step.onFailed(result.error) : step.onCopied(result.written, host.nowMs())),
          );
          break;
        case "install":
          host.install(effect.pages, effect.to, (error) => this.run(error ? step.onFailed(error) : step.onInstalled()));
          break;
        case "commit":
          host.commit((error) => this.run(error ? step.onFailed(error) : step.onCommitted()));
          break;
        case "publish":
          host.publish(effect.to, (error) => this.run(error ? step.onFailed(error) : step.onPublished()));
          break;
        case "remove":
          host.removePages(effect.pages);
          break;
        case "unfreeze":
          host.unfreeze(effect.pages);
          break;
        case "done":
          host.done(effect);
          break;
      }
    }
    host.afterBatch?.();
  }
}

// One step's output of a replica member, and the rule that nothing leaves before what it rests on
// is durable: each Ready with records (or chunk data that must be durable) gets a sequence number,
// and messages and replies made while any numbered Ready is not yet reported durable wait here,
// in order, until the host's "durable" event covers it. So a promise, an acceptance, a "copied",
// a "joined" or a write's ack never leaves ahead of the record it vouches for, nor ahead of an
// earlier one (a table adopted in memory fences requests before it is on disk, but nothing served
// under it leaves until it is).
import type { MemberNote, MemberReady, Outgoing, PeerMessage, RequestReply, ChunkApply } from "./member-messages.ts";
import type { MemberRecord } from "./member-state.ts";

export class MemberOutbox {
  private lastSeq = 0;
  private durableSeq = 0;
  private readonly held: { seq: number; messages: Outgoing[]; replies: RequestReply[] }[] = [];
  private ready: MemberReady = emptyReady();
  private messages: Outgoing[] = [];
  private replies: RequestReply[] = [];

  /** A new step begins. */
  open(): void {
    this.ready = emptyReady();
    this.messages = [];
    this.replies = [];
  }

  record(record: MemberRecord): void {
    this.ready.records.push(record);
  }

  apply(apply: ChunkApply): void {
    this.ready.applies.push(apply);
  }

  send(to: string, message: PeerMessage): void {
    this.messages.push({ to, message });
  }

  reply(reply: RequestReply): void {
    this.replies.push(reply);
  }

  note(note: MemberNote): void {
    this.ready.notes.push(note);
  }

  /** The host reports every Ready up to `seq` durable: what waited on them is released into this step. */
  durable(seq: number): void {
    this.durableSeq = Math.max(this.durableSeq, Math.min(seq, this.lastSeq));
    while (this.held.length > 0 && this.held[0]!.seq <= this.durableSeq) {
      const { messages, replies } = this.held.shift()!;
      this.ready.messages.push(...messages);
      this.ready.replies.push(...replies);
    }
  }

  /** The step's Ready: numbered if it must be made durable, its messages held if anything is not durable yet. */
  close(wakeAtMs: number): MemberReady {
    const ready = this.ready;
    if (ready.records.length > 0 || ready.applies.some((apply) => apply.kind !== "write")) ready.durableSeq = ++this.lastSeq;
    if (this.messages.length > 0 || this.replies.length > 0) {
      if (this.lastSeq > this.durableSeq) this.held.push({ seq: this.lastSeq, messages: this.messages, replies: this.replies });
      else {
        ready.messages.push(...this.messages);
        ready.replies.push(...this.replies);
      }
    }
    ready.wakeAtMs = wakeAtMs;
    return ready;
  }
}

function emptyReady(): MemberReady {
  return { records: [], applies: [], messages: [], replies: [], wakeAtMs: Infinity, notes: [] };
}

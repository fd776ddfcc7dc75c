// Writes to a Bun socket without losing bytes: Bun's socket.write may take only part of a buffer
// under backpressure, and the rest must be written again from the drain handler, in order.
import type { Socket } from "bun";

export class SocketWriter {
  private readonly queue: Uint8Array[] = [];
  /** Called when the queue entry at the same index has been handed to the kernel. */
  private readonly onWritten: ((() => void) | undefined)[] = [];
  private queuedBytes = 0;

  constructor(
    private readonly socket: Socket<unknown>,
    /** Past this many unsent bytes the peer is not reading; the owner should drop it. */
    readonly maxQueuedBytes: number,
  ) {}

  /**
   * Queues or writes `bytes`; returns false when the queue is over its bound. `onWritten` runs
   * once the socket has taken all of them, so a pooled buffer can be reused from then on.
   */
  write(bytes: Uint8Array, onWritten?: () => void): boolean {
    if (this.queue.length === 0) {
      const written = bytes.byteLength === 0 ? 0 : this.socket.write(bytes);
      if (written >= bytes.byteLength) {
        onWritten?.();
        return true;
      }
      const rest = bytes.subarray(Math.max(written, 0));
      this.queue.push(rest);
      this.onWritten.push(onWritten);
      this.queuedBytes += rest.byteLength;
    } else {
      this.queue.push(bytes);
      this.onWritten.push(onWritten);
      this.queuedBytes += bytes.byteLength;
    }
    return this.queuedBytes <= this.maxQueuedBytes;
  }

  /** Call from the socket's drain handler. */
  drain(): void {
    while (this.queue.length > 0) {
      const head = this.queue[0]!;
      const written = this.socket.write(head);
      if (written < head.byteLength) {
        const taken = Math.max(written, 0);
        this.queue[0] = head.subarray(taken);
        this.queuedBytes -= taken;
        return;
      }
      this.queue.shift();
      this.onWritten.shift()?.();
      this.queuedBytes -= head.byteLength;
    }
  }

  get pendingBytes(): number {
    return this.queuedBytes;
  }
}

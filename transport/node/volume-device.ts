// A volume, or one of its snapshots, as the NBD server sees it: a BlockDevice whose every call
// re-reads the volume's record and hands the request to the VolumeRouter. Kept apart from the
// router because it is the NBD side's view, and holds nothing but the names it was opened by.
import type { BlockDevice, Extent } from "../../core/block-device.ts";
import type { Target, VolumeRouter } from "./volume-router.ts";

export class VolumeDevice implements BlockDevice {
  readonly readOnly: boolean;

  constructor(
    private readonly router: VolumeRouter,
    private readonly volume: string,
    private readonly uid: string,
    readonly sizeBytes: number,
    readonly preferredBlockSizeBytes: number,
    private readonly layer: string,
    readonly name: string,
  ) {
    this.readOnly = layer !== uid;
  }

  private target(): Target {
    return this.router.current(this.volume, this.uid, this.layer);
  }

  read(offset: number, length: number, into: Uint8Array, intoOffset: number): Promise<void> | void {
    return this.router.read(this.target(), offset, length, into, intoOffset);
  }

  write(offset: number, data: Uint8Array, fua: boolean): Promise<void> | void {
    return this.router.write(this.target(), offset, data, fua);
  }

  /** On the head, covers every connection's writes to the volume (CAN_MULTI_CONN); a snapshot takes no writes and owes nothing. */
  flush(): Promise<void> {
    return this.readOnly ? Promise.resolve() : this.router.flush(this.uid);
  }

  trim(offset: number, length: number, fua: boolean): Promise<void> | void {
    return this.router.zero(this.target(), offset, length, fua);
  }

  writeZeroes(offset: number, length: number, fua: boolean): Promise<void> | void {
    return this.router.zero(this.target(), offset, length, fua);
  }

  blockStatus(offset: number, length: number): Promise<Extent[]> {
    return this.router.blockStatus(this.target(), offset, length);
  }
}

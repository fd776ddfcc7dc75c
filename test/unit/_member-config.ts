// A replica member's configuration for unit tests: short, fixed timings and a constant random
// source, so a test steps the member by hand and knows when it will act.
import type { MemberConfig } from "../../core/replica/replica-member.ts";

export function testMemberConfig(self: string, members: string[], home: string[][], extra: Partial<MemberConfig> = {}): MemberConfig {
  return {
    self,
    members,
    bootId: "boot1",
    home: (volume) => (volume === "vol" ? home : undefined),
    chunksPerGroup: () => 4,
    heartbeatIntervalMs: 15,
    suspectAfterMs: 75,
    policyIntervalMs: 20,
    copyBatchChunks: 2,
    copyTimeoutMs: 40,
    joinChunksMax: 2,
    proposer: { attemptTimeoutMs: 40, backoffMs: 15, maxAttempts: 6 },
    random: () => 0.5,
    ...extra,
  };
}

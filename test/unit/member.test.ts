// Member records arrive in hellos and joins from the network; only well-formed ones may be stored.
import { expect, test } from "bun:test";
import { isValidIdentity, isValidMemberAddress } from "../../core/cluster/member.ts";

test("member addresses must be a plain host (or [v6]) and a port", () => {
  for (const good of ["127.0.0.1:7400", "node-2.example.org:10809", "[::1]:7400", "[fe80::1%eth0]:1"]) expect(isValidMemberAddress(good)).toBe(true);
  for (const bad of ["12\ufffd.0.0.1:7400", "127.0.0.1", ":7400", "127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:7x00", "a b:1", "127.0.0.1:+80", `${"a".repeat(300)}:1`, ""]) {
    expect(isValidMemberAddress(bad)).toBe(false);
  }
});

test("a member's identity from the wire must look like the random id a data directory is given", () => {
  expect(isValidIdentity(crypto.randomUUID())).toBe(true);
  for (const bad of ["", "short", "NOT-HEX-AT-ALL", "0123456789abcdef".repeat(5), "12345678 abc", "12345678\u0000"]) expect(isValidIdentity(bad)).toBe(false);
});

// A node's last-resort failures end the process with one FATAL line, not a node that runs on.
import { describe, expect, test } from "bun:test";
import * as path from "node:path";
import { fatal, invariant, InvariantError, setFatalHandler } from "../../core/invariant.ts";
import { ShoalError } from "../../core/errors.ts";
import { fatalExitCode } from "../../transport/node/fatal-exit.ts";

async function runChild(how: string): Promise<{ exitCode: number; stdout: string; stderr: string }> {
  const child = Bun.spawn([process.execPath, path.join(import.meta.dir, "_fatal-child.ts"), how], { stdout: "pipe", stderr: "pipe" });
  const [stdout, stderr, exitCode] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text(), child.exited]);
  return { exitCode, stdout, stderr };
}

describe("fatal", () => {
  test("an unhandled rejection exits 1 with a FATAL line and the stack", async () => {
    const { exitCode, stdout, stderr } = await runChild("rejection");
    expect(exitCode).toBe(1);
    expect(stdout).toBe("");
    expect(stderr).toStartWith("ERROR FATAL unhandled promise rejection: a lost error path; the node stops now");
    expect(stderr).toContain("_fatal-child.ts");
  });

  test("a broken invariant exits 1 naming the rule", async () => {
    const { exitCode, stdout, stderr } = await runChild("invariant");
    expect([exitCode, stdout]).toEqual([1, ""]);
    expect(stderr).toStartWith("ERROR FATAL invariant broken: arithmetic holds;");
  });

  test("a disk error nobody caught exits 6 (I/O), one line without a stack", async () => {
    const { exitCode, stdout, stderr } = await runChild("fsync");
    expect([exitCode, stdout]).toEqual([6, ""]);
    expect(stderr.trim().split("\n")).toEqual(["ERROR FATAL unhandled promise rejection: EIO: i/o error, fdatasync; the node stops now and recovers from its data directory when restarted"]);
  });

  test("without a node's handler, invariant throws and fatal returns (unit tests and simulations go on)", () => {
    const seen: string[] = [];
    const previous = setFatalHandler((_, reason) => seen.push(reason));
    try {
      expect(() => invariant(false, "never")).toThrow(InvariantError);
      expect(() => invariant(true, "fine")).not.toThrow();
      fatal(new Error("x"), "checked");
      expect(seen).toEqual(["invariant broken", "checked"]);
    } finally {
      setFatalHandler(previous);
    }
  });

  test("exit codes: a bug 1, an errno 6, a ShoalError its own", () => {
    expect(fatalExitCode(new InvariantError("x"))).toBe(1);
    expect(fatalExitCode(new TypeError("x"))).toBe(1);
    expect(fatalExitCode(Object.assign(new Error("x"), { code: "EIO" }))).toBe(6);
    expect(fatalExitCode(new ShoalError("NODE_DOWN", "x"))).toBe(5);
  });
});

// Processes a data-path benchmark starts (anchors, fio, nodes), registered so every exit path
// kills them and removes the scratch files; and the nbdkit file-plugin anchor they all compare with.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import type { Subprocess } from "bun";
import { freePort, run, TestNode, waitFor, waitGroupUp } from "../integration/_cluster.ts";

const ANCHOR_START_TIMEOUT_MS = 10_000;

export class Resources {
  readonly root = fs.mkdtempSync(path.join(os.tmpdir(), "shoal-bench-"));
  readonly processes = new Set<Subprocess>();
  readonly nodes: TestNode[] = [];
  private cleaned = false;

  spawn(command: string[], options: { stderr?: "pipe" | "ignore" } = {}): Subprocess {
    const proc = Bun.spawn(command, { stdin: "ignore", stdout: "ignore", stderr: options.stderr ?? "pipe" });
    this.processes.add(proc);
    void proc.exited.then(() => this.processes.delete(proc));
    return proc;
  }

  /** Kills what is still running (SIGKILL: the data is scratch) and removes the temp dir. */
  async cleanup(): Promise<void> {
    if (this.cleaned) return;
    this.cleaned = true;
    const running = [...this.processes, ...this.nodes.map((node) => node.proc).filter((proc) => proc !== undefined)];
    for (const proc of running) if (proc.exitCode === null && proc.signalCode === null) proc.kill("SIGKILL");
    await Promise.all(running.map((proc) => proc.exited));
    fs.rmSync(this.root, { recursive: true, force: true });
  }
}

export async function waitForExport(uri: string, proc: Subprocess, what: string): Promise<void> {
  await waitFor(
    `${what} to serve ${uri}`,
    async () => {
      if (proc.exitCode !== null) throw new Error(`${what} exited with ${proc.exitCode}: ${await new Response(proc.stderr as ReadableStream).text()}`);
      return (await run(["nbdinfo", "--size", uri], { timeoutMs: 5000 })).exitCode === 0;
    },
    ANCHOR_START_TIMEOUT_MS,
  );
}

/** A fresh sparse file (`truncate`), like the page files Shoal creates on first write. */
export function sparseFile(resources: Resources, name: string, sizeBytes: number): string {
  const file = path.join(resources.root, name);
  fs.writeFileSync(file, "");
  fs.truncateSync(file, sizeBytes);
  return file;
}

/** nbdkit's file plugin with its defaults (cache=default, 16 threads) on a sparse file: the anchor. */
export async function startNbdkitFile(resources: Resources, sizeBytes: number, fileName = "nbdkit.raw"): Promise<{ uri: string; pid: number }> {
  const file = sparseFile(resources, fileName, sizeBytes);
  const port = await freePort();
  const proc = resources.spawn(["nbdkit", "-f", "-p", String(port), "-i", "127.0.0.1", "file", file]);
  const uri = `nbd://127.0.0.1:${port}/bench`;
  await waitForExport(uri, proc, "nbdkit");
  return { uri, pid: proc.pid };
}

const GROUP_START_TIMEOUT_MS = 30_000;

/** `count` nodes node1..nodeN under the run's root, node1 first and the rest joining it; `argsOf` gives each its extra flags. */
export async function startGroup(resources: Resources, count: number, argsOf: (index: number) => string[] = () => []): Promise<TestNode[]> {
  const nodes: TestNode[] = [];
  for (let index = 1; index <= count; index++) {
    const node = new TestNode(`node${index}`, path.join(resources.root, `node${index}`), await freePort(), await freePort());
    node.extraArgs = argsOf(index);
    resources.nodes.push(node);
    nodes.push(node);
    await node.start(index === 1 ? undefined : nodes[0]!.meshAddress);
  }
  await waitGroupUp(nodes, GROUP_START_TIMEOUT_MS);
  return nodes;
}

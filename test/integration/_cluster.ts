// Real `shoal node` processes on loopback for integration tests, plus helpers to run the CLI
// and the real NBD clients (qemu-io, qemu-img, nbdcopy, nbdinfo) against them.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import type { Subprocess } from "bun";
import { adminRequest } from "../../cmd/_cli.ts";

const ROOT = path.resolve(import.meta.dir, "../..");

/** The command that runs `shoal`: the compiled binary when npm test built it, else bun + source. */
export function shoalCommand(): string[] {
  const bin = process.env.SHOAL_BIN;
  if (bin && fs.existsSync(bin)) return [bin];
  return [process.execPath, path.join(ROOT, "cmd/shoal.ts")];
}

export async function freePort(): Promise<number> {
  const listener = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  const port = listener.port;
  listener.stop(true);
  return port;
}

/** Polls `check` until it returns a truthy value or `timeoutMs` passes. Never a fixed sleep. */
export async function waitFor<T>(what: string, check: () => Promise<T | undefined | false> | T | undefined | false, timeoutMs = 15_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  while (Date.now() < deadline) {
    try {
      const value = await check();
      if (value) return value;
    } catch (err) {
      lastError = err;
    }
    await Bun.sleep(50);
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${lastError ? `: ${(lastError as Error).message}` : ""}`);
}

export interface RunResult {
  exitCode: number;
  stdout: string;
  stderr: string;
}

export async function run(command: string[], options: { stdin?: Uint8Array | string; env?: Record<string, string>; timeoutMs?: number } = {}): Promise<RunResult> {
  const proc = Bun.spawn(command, {
    stdin: options.stdin === undefined ? "ignore" : typeof options.stdin === "string" ? new TextEncoder().encode(options.stdin) : options.stdin,
    stdout: "pipe",
    stderr: "pipe",
    env: { ...process.env, ...options.env },
  });
  const timer = setTimeout(() => proc.kill("SIGKILL"), options.timeoutMs ?? 120_000);
  const [stdout, stderr, exitCode] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
  clearTimeout(timer);
  return { exitCode, stdout, stderr };
}

export class TestNode {
  proc: Subprocess | undefined;
  stderrLog = "";
  /** More `shoal node` flags (--tls DIR, --metrics, --config, ...), for tests of those flags. */
  extraArgs: string[] = [];

  constructor(
    readonly id: string,
    readonly dataDir: string,
    readonly meshPort: number,
    readonly nbdPort: number,
    private readonly env: Record<string, string> = {},
  ) {}

  get meshAddress(): string {
    return `127.0.0.1:${this.meshPort}`;
  }

  nbdUrl(exportName: string): string {
    return `nbd://127.0.0.1:${this.nbdPort}/${exportName}`;
  }

  async start(join?: string): Promise<void> {
    const args = [...shoalCommand(), "node", "--id", this.id, "--data", this.dataDir, "--listen", this.meshAddress, "--nbd", `127.0.0.1:${this.nbdPort}`];
    if (join) args.push("--join", join);
    args.push(...this.extraArgs);
    this.stderrLog = "";
    const proc = Bun.spawn(args, { stdout: "ignore", stderr: "pipe", stdin: "ignore", env: { ...process.env, SHOAL_LOG_LEVEL: "3", ...this.env } });
    this.proc = proc;
    void (async () => {
      for await (const chunk of proc.stderr as ReadableStream<Uint8Array>) this.stderrLog += new TextDecoder().decode(chunk);
    })();
    await waitFor(`node ${this.id} to answer`, async () => {
      if (proc.exitCode !== null) throw new Error(`node ${this.id} exited with ${proc.exitCode}: ${this.stderrLog}`);
      return (await adminRequest(this.meshAddress, "admin.node.info", {}, 2000)).id === this.id;
    });
  }

  /** SIGTERM and wait for a clean exit; returns the exit code. */
  async stop(): Promise<number | null> {
    if (!this.proc || this.proc.exitCode !== null) return this.proc?.exitCode ?? null;
    this.proc.kill("SIGTERM");
    return this.proc.exited;
  }

  async kill9(): Promise<void> {
    if (!this.proc || this.proc.exitCode !== null) return;
    this.proc.kill("SIGKILL");
    await this.proc.exited;
  }
}

/** Waits until every node sees every one of `nodes` up. */
export async function waitGroupUp(nodes: TestNode[], timeoutMs = 15_000): Promise<void> {
  for (const node of nodes) {
    await waitFor(
      `${node.id} to see the whole group up`,
      async () => {
        const members = (await adminRequest(node.meshAddress, "admin.route.nodes", {}, 3000)).nodes as { state: string }[];
        return members.length === nodes.length && members.every((member) => member.state === "up");
      },
      timeoutMs,
    );
  }
}

/** Every node's replica sets of `volume` are whole again: each page group has its copies, each up to date. */
export async function waitSetsWhole(cluster: TestCluster, volume: string): Promise<void> {
  for (const node of cluster.nodes) {
    await waitFor(`${node.id}'s replica sets of ${volume} to be whole`, async () => {
      const shown = JSON.parse((await cluster.shoal(["route", "show", volume, "--json"], { node })).stdout);
      return shown.replicaSets?.whole === true;
    }, 30_000);
  }
}

export class TestCluster {
  readonly nodes: TestNode[] = [];
  readonly root: string;

  private constructor() {
    this.root = fs.mkdtempSync(path.join(os.tmpdir(), "shoal-it-"));
  }

  /** `env` may differ per node (e.g. SHOAL_CLOCK_SKEW_MS): pass a function of the node's index. */
  static async start(
    count: number,
    env: Record<string, string> | ((index: number) => Record<string, string>) = {},
    nodeArgs: (index: number) => string[] = () => [],
  ): Promise<TestCluster> {
    const cluster = new TestCluster();
    try {
      for (let index = 0; index < count; index++) await cluster.addNode(typeof env === "function" ? env(index) : env, nodeArgs(index));
      await cluster.waitConverged();
    } catch (err) {
      await cluster.stop();
      throw err;
    }
    return cluster;
  }

  async addNode(env: Record<string, string> = {}, extraArgs: string[] = []): Promise<TestNode> {
    const index = this.nodes.length + 1;
    const node = new TestNode(`node${index}`, path.join(this.root, `node${index}`), await freePort(), await freePort(), env);
    node.extraArgs = extraArgs;
    this.nodes.push(node);
    await node.start(index === 1 ? undefined : this.nodes[0]!.meshAddress);
    return node;
  }

  /** Every node sees every member up. */
  async waitConverged(): Promise<void> {
    await waitGroupUp(this.nodes);
  }

  shoal(args: string[], options: { stdin?: Uint8Array | string; node?: TestNode } = {}): Promise<RunResult> {
    const node = options.node ?? this.nodes[0]!;
    return run([...shoalCommand(), ...args], { stdin: options.stdin, env: { SHOAL_NODE: node.meshAddress } });
  }

  async stop(): Promise<void> {
    await Promise.all(this.nodes.map((node) => node.kill9()));
    fs.rmSync(this.root, { recursive: true, force: true });
  }
}

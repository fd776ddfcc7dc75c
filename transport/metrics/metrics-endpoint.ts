// `--metrics HOST:PORT`: a plain HTTP listener that answers GET /metrics with the node's metrics in
// the Prometheus text format. Nothing else is served; a scrape only reads counters.
import type { Server } from "bun";
import { asShoalError } from "../../core/errors.ts";
import { listenError } from "../wire/listen-error.ts";
import type { MetricsRegistry } from "../../core/metrics.ts";

export interface MetricsEndpoint {
  port: number;
  stop(): void;
}

const CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

export function serveMetrics(host: string, port: number, registry: MetricsRegistry): MetricsEndpoint {
  let server: Server<undefined>;
  try {
    server = Bun.serve({
      hostname: host,
      port,
      // Scrapes are tiny; refuse request bodies rather than buffer them.
      maxRequestBodySize: 1024,
      fetch(request) {
        const { pathname } = new URL(request.url);
        if (pathname !== "/metrics") return new Response("not found; metrics are at /metrics\n", { status: 404 });
        if (request.method !== "GET" && request.method !== "HEAD") return new Response("use GET\n", { status: 405 });
        return new Response(registry.expose(), { headers: { "content-type": CONTENT_TYPE } });
      },
      error(err) {
        return new Response(`metrics failed: ${asShoalError(err).message}\n`, { status: 500 });
      },
    });
  } catch (err) {
    throw listenError("metrics", host, port, err);
  }
  return { port: server.port ?? port, stop: () => void server.stop(true) };
}

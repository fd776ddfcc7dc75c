// The metrics registry and its Prometheus text: buckets land where they must, and what is rendered
// parses back to the same numbers.
import { expect, test } from "bun:test";
import { Histogram, logBuckets, MetricsRegistry, renderPrometheus, MetricFamily } from "../../core/metrics.ts";
import { parsePrometheus, sumOf } from "../integration/_prometheus.ts";
import { NodeMetrics } from "../../transport/metrics/node-metrics.ts";

test("log buckets double and an observation lands in the first bucket at or above it", () => {
  const bounds = logBuckets(0.001, 2, 5); // 1, 2, 4, 8, 16 ms
  expect(bounds).toEqual([0.001, 0.002, 0.004, 0.008, 0.016]);
  const histogram = new Histogram(bounds);
  for (const value of [0, 0.001, 0.0010001, 0.002, 0.003, 0.008, 0.0161, 5]) histogram.observe(value);
  // (≤1ms) 0, 0.001 | (1,2] 0.0010001, 0.002 | (2,4] 0.003 | (4,8] 0.008 | (8,16] none | +Inf 0.0161, 5
  expect([...histogram.counts]).toEqual([2, 2, 1, 1, 0, 2]);
  expect(histogram.count).toBe(8);
});

test("every bucket boundary value lands in its own bucket despite floating point", () => {
  const bounds = logBuckets(0.00005, 2, 22);
  const histogram = new Histogram(bounds);
  for (const bound of bounds) histogram.observe(bound);
  expect([...histogram.counts]).toEqual([...bounds.map(() => 1), 0]);
});

test("rendered text parses back: counters, labelled gauges with escaping, cumulative histogram buckets", () => {
  const registry = new MetricsRegistry();
  registry.counter("t_requests_total", "requests").with().inc(3);
  registry.gauge("t_volume_pages", 'pages "per" volume\\', ["volume"]).with('db"1\\\n').set(7);
  const latency = registry.histogram("t_latency_seconds", "latency", ["op"], [0.1, 1]).with("read");
  latency.observe(0.05);
  latency.observe(0.5);
  latency.observe(2);
  let collected = 0;
  registry.onCollect(() => collected++);
  const { samples, types } = parsePrometheus(registry.expose());
  expect(collected).toBe(1);
  expect(types.get("t_latency_seconds")).toBe("histogram");
  expect(sumOf(samples, "t_requests_total")).toBe(3);
  expect(sumOf(samples, "t_volume_pages", { volume: 'db"1\\\n' })).toBe(7);
  expect(sumOf(samples, "t_latency_seconds_bucket", { le: "0.1" })).toBe(1);
  expect(sumOf(samples, "t_latency_seconds_bucket", { le: "1" })).toBe(2);
  expect(sumOf(samples, "t_latency_seconds_bucket", { le: "+Inf" })).toBe(3);
  expect(sumOf(samples, "t_latency_seconds_count", { op: "read" })).toBe(3);
  expect(sumOf(samples, "t_latency_seconds_sum")).toBeCloseTo(2.55);
});

test("bad names, wrong label counts and double registration are programmer errors", () => {
  const registry = new MetricsRegistry();
  expect(() => registry.counter("1bad", "x")).toThrow();
  expect(() => registry.gauge("ok", "x", ["le"])).toThrow();
  registry.counter("dup", "x");
  expect(() => registry.counter("dup", "x")).toThrow();
  expect(() => new MetricFamily("f", "x", "counter", ["a"]).with()).toThrow();
  expect(renderPrometheus([])).toBe("");
});

test("route moves report progress through setMoveProgress and disappear when cleared", () => {
  const metrics = new NodeMetrics();
  metrics.setMoveProgress("db1", 3, 10);
  let samples = parsePrometheus(metrics.registry.expose()).samples;
  expect(sumOf(samples, "shoal_move_pages_total", { volume: "db1" })).toBe(10);
  expect(sumOf(samples, "shoal_move_pages_done", { volume: "db1" })).toBe(3);
  metrics.removeMoveProgress("db1");
  samples = parsePrometheus(metrics.registry.expose()).samples;
  expect(samples.some((sample) => sample.name.startsWith("shoal_move_"))).toBe(false);
});

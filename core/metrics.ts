// A small metrics registry: counters, gauges and histograms with fixed log-spaced buckets, in
// labelled families, and the Prometheus text exposition rendered from them by a pure function.
// Observing is a number add (histograms: one Math.log), never an allocation, so the data path
// can count every request; callers resolve a family's labelled child once and keep it.

export type MetricType = "counter" | "gauge" | "histogram";

export class Counter {
  value = 0;
  inc(amount = 1): void {
    this.value += amount;
  }
}

export class Gauge {
  value = 0;
  set(value: number): void {
    this.value = value;
  }
  inc(amount = 1): void {
    this.value += amount;
  }
  dec(amount = 1): void {
    this.value -= amount;
  }
}

/** Bucket i counts observations in (bounds[i-1], bounds[i]]; the last bucket is +Inf. */
export class Histogram {
  readonly counts: Float64Array;
  sum = 0;
  count = 0;
  private readonly logStart: number;
  private readonly logFactor: number;

  constructor(readonly bounds: readonly number[]) {
    this.counts = new Float64Array(bounds.length + 1);
    this.logStart = Math.log(bounds[0]!);
    this.logFactor = bounds.length > 1 ? Math.log(bounds[1]! / bounds[0]!) : 1;
  }

  /** O(1): the bucket comes from a logarithm, then one step fixes floating-point edges. */
  observe(value: number): void {
    const bounds = this.bounds;
    let index = value <= bounds[0]! ? 0 : Math.ceil((Math.log(value) - this.logStart) / this.logFactor);
    if (index > bounds.length) index = bounds.length;
    if (index < bounds.length && value > bounds[index]!) index++;
    else if (index > 0 && value <= bounds[index - 1]!) index--;
    this.counts[index]!++;
    this.sum += value;
    this.count++;
  }
}

/** `count` bounds from `start`, each `factor` times the one before (rounded to 6 digits). */
export function logBuckets(start: number, factor: number, count: number): number[] {
  if (!(start > 0) || !(factor > 1) || count < 1) throw new RangeError("log buckets need start > 0, factor > 1, count >= 1");
  const bounds: number[] = [];
  for (let i = 0; i < count; i++) bounds.push(Number((start * factor ** i).toPrecision(6)));
  return bounds;
}

/** Seconds from 50 µs to about 100 s, doubling: wide enough for a page read and a hold. */
export const LATENCY_BUCKETS_SECONDS = logBuckets(0.00005, 2, 22);

type MetricOf<T extends MetricType> = T extends "counter" ? Counter : T extends "gauge" ? Gauge : Histogram;

export interface FamilyChild<M> {
  labelValues: readonly string[];
  metric: M;
}

export class MetricFamily<T extends MetricType = MetricType> {
  private readonly children = new Map<string, FamilyChild<MetricOf<T>>>();

  constructor(
    readonly name: string,
    readonly help: string,
    readonly type: T,
    readonly labelNames: readonly string[],
    private readonly bucketBounds: readonly number[] = LATENCY_BUCKETS_SECONDS,
  ) {}

  /** The child for these label values, created on first use. Resolve once and keep it on hot paths. */
  with(...labelValues: string[]): MetricOf<T> {
    if (labelValues.length !== this.labelNames.length) {
      throw new RangeError(`${this.name} takes labels ${this.labelNames.join(",")}, got ${labelValues.length} values`);
    }
    const key = labelValues.join("\u0000");
    let child = this.children.get(key);
    if (!child) {
      child = { labelValues, metric: this.create() };
      this.children.set(key, child);
    }
    return child.metric;
  }

  /** Drops one child (a volume deleted, a peer gone), so a family does not grow for ever. */
  remove(...labelValues: string[]): void {
    this.children.delete(labelValues.join("\u0000"));
  }

  /** Drops every child: for gauges that are rebuilt from state at each scrape. */
  clear(): void {
    this.children.clear();
  }

  entries(): Iterable<FamilyChild<MetricOf<T>>> {
    return this.children.values();
  }

  private create(): MetricOf<T> {
    const metric = this.type === "counter" ? new Counter() : this.type === "gauge" ? new Gauge() : new Histogram(this.bucketBounds);
    return metric as MetricOf<T>;
  }
}

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

export class MetricsRegistry {
  private readonly families = new Map<string, MetricFamily>();
  private readonly collectors: (() => void)[] = [];

  counter(name: string, help: string, labelNames: string[] = []): MetricFamily<"counter"> {
    return this.register(new MetricFamily(name, help, "counter", labelNames));
  }

  gauge(name: string, help: string, labelNames: string[] = []): MetricFamily<"gauge"> {
    return this.register(new MetricFamily(name, help, "gauge", labelNames));
  }

  histogram(name: string, help: string, labelNames: string[] = [], bounds: readonly number[] = LATENCY_BUCKETS_SECONDS): MetricFamily<"histogram"> {
    return this.register(new MetricFamily(name, help, "histogram", labelNames, bounds));
  }

  /** `collect` runs before each render: it sets gauges that are read from state, not counted. */
  onCollect(collect: () => void): void {
    this.collectors.push(collect);
  }

  /** Runs the collectors and renders every family. */
  expose(): string {
    for (const collect of this.collectors) collect();
    return renderPrometheus([...this.families.values()]);
  }

  private register<T extends MetricType>(family: MetricFamily<T>): MetricFamily<T> {
    if (!METRIC_NAME.test(family.name)) throw new RangeError(`'${family.name}' is not a valid metric name`);
    for (const label of family.labelNames) {
      if (!LABEL_NAME.test(label) || label === "le") throw new RangeError(`'${label}' is not a valid label name`);
    }
    if (this.families.has(family.name)) throw new RangeError(`metric ${family.name} is registered twice`);
    this.families.set(family.name, family as unknown as MetricFamily);
    return family;
  }
}

/** The Prometheus text exposition format (version 0.0.4) of `families`. Pure. */
export function renderPrometheus(families: readonly MetricFamily[]): string {
  const lines: string[] = [];
  for (const family of families) {
    lines.push(`# HELP ${family.name} ${escapeHelp(family.help)}`, `# TYPE ${family.name} ${family.type}`);
    for (const { labelValues, metric } of family.entries()) {
      const pairs = family.labelNames.map((label, i) => `${label}="${escapeLabel(labelValues[i]!)}"`);
      if (metric instanceof Histogram) renderHistogram(lines, family.name, pairs, metric);
      else lines.push(`${family.name}${labelSet(pairs)} ${formatValue(metric.value)}`);
    }
  }
  return lines.length === 0 ? "" : `${lines.join("\n")}\n`;
}

function renderHistogram(lines: string[], name: string, pairs: string[], histogram: Histogram): void {
  let cumulative = 0;
  for (let i = 0; i <= histogram.bounds.length; i++) {
    cumulative += histogram.counts[i]!;
    const le = i < histogram.bounds.length ? formatValue(histogram.bounds[i]!) : "+Inf";
    lines.push(`${name}_bucket${labelSet([...pairs, `le="${le}"`])} ${formatValue(cumulative)}`);
  }
  lines.push(`${name}_sum${labelSet(pairs)} ${formatValue(histogram.sum)}`, `${name}_count${labelSet(pairs)} ${formatValue(histogram.count)}`);
}

function labelSet(pairs: string[]): string {
  return pairs.length === 0 ? "" : `{${pairs.join(",")}}`;
}

function formatValue(value: number): string {
  if (Number.isNaN(value)) return "NaN";
  if (value === Infinity) return "+Inf";
  if (value === -Infinity) return "-Inf";
  return String(value);
}

function escapeLabel(value: string): string {
  return value.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");
}

function escapeHelp(value: string): string {
  return value.replace(/\\/g, "\\\\").replace(/\n/g, "\\n");
}

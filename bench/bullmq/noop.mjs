// The peer of bench/vs-bullmq: BullMQ processing jobs that do nothing, on the same Redis as the
// relay, fed the way loadgen feeds the relay (all jobs added in a few bulk calls while the
// worker already runs). Completed jobs are removed, as the relay deletes acknowledged entries.
//
//   node bench/bullmq/noop.mjs [--jobs 100000] [--batches 10] [--concurrency 100] [--keep-completed] [--redis redis://127.0.0.1:6379]
//
// --keep-completed leaves completed jobs in Redis (BullMQ's default) instead of removing them.
//
// Prints one JSON line: jobs, seconds from the first add to the last completion, jobs/s, the
// add -> completion latency percentiles (ms) and this process's peak RSS. Removes its queue
// (and every key of its prefix) at the end, also after a failure.
import { Queue, Worker } from "bullmq";
import { Redis } from "ioredis";
import { randomUUID } from "node:crypto";

function option(name, fallback) {
  const at = process.argv.indexOf(`--${name}`);
  return at > 0 && process.argv[at + 1] !== undefined ? process.argv[at + 1] : fallback;
}

function positive(name, fallback) {
  const value = Number(option(name, fallback));
  if (!Number.isInteger(value) || value < 1) {
    console.error(`--${name} must be a positive integer, got ${option(name, fallback)}`);
    process.exit(2);
  }
  return value;
}

const jobs = positive("jobs", 100000);
const batches = positive("batches", 10);
const concurrency = positive("concurrency", 100);
const url = option("redis", process.env.REDIS_URL ?? "redis://127.0.0.1:6379");
// BullMQ takes constructed clients in an ES module; a worker needs maxRetriesPerRequest: null.
const client = () => new Redis(url, { maxRetriesPerRequest: null });
const prefix = `bench-bullmq-${randomUUID()}`;
const name = "noop";
const keep = process.argv.includes("--keep-completed");

const queue = new Queue(name, { connection: client(), prefix });
const latencies = [];
let done;
const finished = new Promise((resolve) => (done = resolve));
const worker = new Worker(
  name,
  async (job) => {
    latencies.push(Date.now() - job.timestamp);
    if (latencies.length === jobs) done();
  },
  { connection: client(), prefix, concurrency },
);

let failed = false;
try {
  await worker.waitUntilReady();
  const started = process.hrtime.bigint();
  const per = Math.ceil(jobs / batches);
  for (let first = 0; first < jobs; first += per) {
    const count = Math.min(per, jobs - first);
    const bulk = Array.from({ length: count }, (_, i) => ({
      name,
      data: { n: first + i },
      opts: keep ? {} : { removeOnComplete: true, removeOnFail: true },
    }));
    await queue.addBulk(bulk);
  }
  await finished;
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  latencies.sort((a, b) => a - b);
  const pct = (p) => latencies[Math.round((latencies.length - 1) * p)];
  console.log(
    JSON.stringify({
      bullmq: "6.7.0",
      jobs,
      batches,
      concurrency,
      completed: keep ? "kept" : "removed",
      seconds: Number(seconds.toFixed(2)),
      rate: Math.round(jobs / seconds),
      p50_ms: pct(0.5),
      p99_ms: pct(0.99),
      peak_rss_mib: Math.round(process.resourceUsage().maxRSS / 1024),
    }),
  );
} catch (error) {
  failed = true;
  console.error(`bullmq run failed: ${error}`);
} finally {
  await worker.close();
  await queue.obliterate({ force: true }).catch((error) => console.error(`could not remove the queue: ${error}`));
  await queue.close();
}
process.exit(failed ? 1 : 0);

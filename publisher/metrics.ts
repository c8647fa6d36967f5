/**
 * The publisher's Prometheus metrics, on a registry of its own (no global registry: two
 * publishers in one process, as in the tests, keep their numbers apart).
 */
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import { JOB_STATES, type JobState } from './jobs.js';

/** Event received → layer published, in seconds: a small layer takes about a second, a large one minutes. */
export const PUBLISH_LATENCY_BUCKETS_S = [0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800];

export interface PublisherMetrics {
  readonly registry: Registry;
  /** A job reached done or failed. */
  finished(state: 'done' | 'failed', latencySeconds: number): void;
  ingested(compressedBytes: number, uncompressedBytes: number): void;
  revision(revision: number, published: boolean): void;
  eventRecords(kind: 'queued' | 'duplicate' | 'ignored', n: number): void;
  /** The content type and body of GET /metrics. */
  render(): Promise<{ contentType: string; body: string }>;
}

export function createMetrics(countJobs: () => Record<JobState, number>): PublisherMetrics {
  const registry = new Registry();
  new Gauge({
    name: 'cvmfs_publisher_jobs', help: 'Jobs in the queue database, by state', labelNames: ['state'], registers: [registry],
    collect() { const c = countJobs(); for (const s of JOB_STATES) this.set({ state: s }, c[s]); },
  });
  const finished = new Counter({ name: 'cvmfs_publisher_jobs_finished_total', help: 'Jobs that reached done or failed since start', labelNames: ['state'], registers: [registry] });
  const records = new Counter({ name: 'cvmfs_publisher_event_records_total', help: 'Webhook event records, by what became of them', labelNames: ['result'], registers: [registry] });
  const read = new Counter({ name: 'cvmfs_publisher_fetched_bytes_total', help: 'Compressed layer bytes read from the object store and ingested', registers: [registry] });
  const ingested = new Counter({ name: 'cvmfs_publisher_ingested_bytes_total', help: 'Uncompressed layer bytes ingested into the repository', registers: [registry] });
  const latency = new Histogram({ name: 'cvmfs_publisher_publish_latency_seconds', help: 'From the event to the job done', buckets: PUBLISH_LATENCY_BUCKETS_S, registers: [registry] });
  const revision = new Gauge({ name: 'cvmfs_publisher_revision', help: 'Revision of the repository as last seen by the publisher', registers: [registry] });
  const revisions = new Counter({ name: 'cvmfs_publisher_revisions_published_total', help: 'Revisions this publisher published since start', registers: [registry] });
  for (const s of ['done', 'failed']) finished.inc({ state: s }, 0);
  for (const r of ['queued', 'duplicate', 'ignored']) records.inc({ result: r }, 0);
  return {
    registry,
    finished(state, seconds) { finished.inc({ state }); if (state === 'done') latency.observe(seconds); },
    ingested(c, u) { read.inc(c); ingested.inc(u); },
    revision(r, published) { revision.set(r); if (published) revisions.inc(); },
    eventRecords(kind, n) { records.inc({ result: kind }, n); },
    async render() { return { contentType: registry.contentType, body: await registry.metrics() }; },
  };
}

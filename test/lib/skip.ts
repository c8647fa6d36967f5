/** Tests that need root, FUSE or dockerd skip loudly, never silently: on stderr and in the TAP stream. */
export function skipLoudly(t: { comment: (...args: never[]) => unknown; plan: (...args: never[]) => unknown }, msg: string): void {
  console.error(`\n*** ${msg} ***\n`);
  (t.comment as (m: string) => void)(msg);
  (t.plan as (n: number, m: string) => void)(0, msg);
}

export const notRoot = (): boolean => process.getuid?.() !== 0;

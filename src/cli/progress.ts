// A progress bar on stderr for long work (loading, prefill), shown only on a TTY and never with --json.
import cliProgress from 'cli-progress';

export interface Progress {
  update(stage: string, done: number, total: number): void;
  stop(): void;
}

export function createProgress(enabled: boolean): Progress {
  if (!enabled || !process.stderr.isTTY) return { update() {}, stop() {} };
  const bar = new cliProgress.SingleBar(
    { stream: process.stderr, format: '{stage} [{bar}] {value}/{total}', hideCursor: true, clearOnComplete: true },
    cliProgress.Presets.shades_classic,
  );
  let started = false;
  let current = '';
  return {
    update(stage, done, total) {
      if (!started || stage !== current) {
        if (started) bar.stop();
        bar.start(total, done, { stage });
        started = true;
        current = stage;
      } else {
        bar.update(done, { stage });
      }
    },
    stop() {
      if (started) bar.stop();
      started = false;
    },
  };
}

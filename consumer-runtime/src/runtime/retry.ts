/**
 * Retry schedules. Pure functions: the runtime keeps the attempt count per event (so
 * it resets when that event succeeds; kafkajs #1592) and asks for the next delay.
 */

/** Back-off of system failures (anything that is not a BusinessError). */
export interface SystemRetryOptions {
  /** Delay before the first retry (ms). */
  initialDelayMs: number;
  /** Upper bound of any delay (ms). */
  maxDelayMs: number;
  /** Growth factor per attempt. */
  multiplier: number;
  /** Share of each delay that is random, 0..1 (0.5: between 50% and 100% of the computed delay). */
  jitter: number;
  /** Attempts (first try included) after which the event is dead-lettered; 0 = never (default). */
  maxAttempts: number;
}

export const systemRetryDefaults: SystemRetryOptions = {
  initialDelayMs: 200, // 0.2 s
  maxDelayMs: 30_000, // 30 s
  multiplier: 2,
  jitter: 0.5, // 50–100% of the exponential delay
  maxAttempts: 0, // retry for ever: a system failure alone never dead-letters
};

/**
 * Delay before retry number `failures` (1 = after the first failure): exponential,
 * capped, with jitter. `random` is injectable for tests.
 */
export function systemRetryDelay(
  failures: number,
  options: SystemRetryOptions,
  random: () => number = Math.random,
): number {
  const exponential = options.initialDelayMs * options.multiplier ** Math.max(0, failures - 1);
  const capped = Math.min(options.maxDelayMs, exponential);
  return Math.round(capped * (1 - options.jitter * random()));
}

/** Business retry of one registration: total attempts and the delays between them. */
export interface BusinessRetryOptions {
  /** Total attempts including the first; 1 = no retry (default). */
  attempts: number;
  /** Delay before retry i+1 (ms); the last value repeats when there are more retries than entries. */
  backoffMs: number[];
}

export const businessRetryDefaults: BusinessRetryOptions = { attempts: 1, backoffMs: [] };

/**
 * After `failures` business failures of one event: the delay before the next
 * attempt (ms), or null when the attempts are used up and the event is dead-lettered.
 */
export function businessRetryDelay(failures: number, options: BusinessRetryOptions): number | null {
  if (failures >= options.attempts) return null;
  const { backoffMs } = options;
  if (backoffMs.length === 0) return 0;
  return backoffMs[Math.min(failures - 1, backoffMs.length - 1)]!;
}

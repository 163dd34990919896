import { readFileSync } from "node:fs";

/** CPU time of the whole machine in ms, all cores, from /proc/stat (user + nice + system + irq + softirq). */
export function machineCpuMs(): number {
  const [, user, nice, system, , , irq, softirq] = readFileSync("/proc/stat", "utf8")
    .split("\n")[0]!
    .split(/\s+/);
  return (Number(user) + Number(nice) + Number(system) + Number(irq) + Number(softirq)) * 10;
}

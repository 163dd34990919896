/** `chatbus send <conversation> <text>`: the producer SDK's send command. */
import { runSendCommand, sendCommandSummary } from "@chatbus/producer-sdk/cli";

/** One line for `chatbus --help`. */
export const summary = sendCommandSummary;

/** Runs `chatbus send`; returns the exit code. */
export function run(argv: string[]): Promise<number> {
  return runSendCommand(argv, "chatbus send");
}

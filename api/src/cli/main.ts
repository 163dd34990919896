#!/usr/bin/env node
/**
 * `chatbus`: one command gathering the subcommands. Each subcommand is a module in
 * this folder exporting `summary` and `run(argv)`, which returns the exit code:
 * 0 done, 1 failed (one line on stderr says why), 2 bad usage.
 */

interface Subcommand {
  /** One line for `chatbus --help`. */
  summary: string;
  run(argv: string[]): Promise<number>;
}

const names = ["send", "subscriptions", "dead-letters", "projection"] as const;

async function load(name: string): Promise<Subcommand> {
  return (await import(`./${name}.ts`)) as Subcommand;
}

async function usage(): Promise<string> {
  const lines = await Promise.all(
    names.map(async (name) => `  ${name.padEnd(15)} ${(await load(name)).summary}`),
  );
  return `usage: chatbus <command> [options]

commands:
${lines.join("\n")}

Run \`chatbus <command> --help\` for a command's options.
exit codes: 0 done, 1 failed, 2 bad usage`;
}

async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === "--help" || name === "-h" || name === "help") {
    console.log(await usage());
    return name ? 0 : 2;
  }
  if (!(names as readonly string[]).includes(name)) {
    console.error(`chatbus: unknown command "${name}"\n\n${await usage()}`);
    return 2;
  }
  return (await load(name)).run(rest);
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (error: unknown) => {
    console.error(`chatbus: ${error instanceof Error ? error.message : String(error)}`);
    process.exitCode = 1;
  },
);

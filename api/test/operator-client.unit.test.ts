/** The operator CLI's URL check: the operator key never travels in clear text to another host by accident. */
import { describe, expect, it } from "vitest";
import { checkApiUrl, operatorEnv } from "../src/cli/operator-client.ts";
import { CliError } from "../src/errors.ts";

describe("checkApiUrl", () => {
  it.each([
    "http://127.0.0.1:3000",
    "http://127.1.2.3",
    "http://localhost:3000/",
    "http://api.localhost",
    "http://[::1]:3000",
    "https://chatbus.example.com",
    "https://10.0.0.5:8443",
  ])("allows %s", (url) => {
    expect(checkApiUrl(url, false)).toBe(url.replace(/\/+$/, ""));
  });

  it.each([
    "http://chatbus.example.com",
    "http://10.0.0.5:3000",
    "http://0.0.0.0:3000",
    "http://127.0.0.1.evil.example",
    "http://[::ffff:a00:5]",
  ])("refuses %s without --insecure, naming the origin and the flag", (url) => {
    expect(() => checkApiUrl(url, false)).toThrow(CliError);
    expect(() => checkApiUrl(url, false)).toThrow(/clear text to http:\/\/.*--insecure/);
    expect(checkApiUrl(url, true)).toBe(url);
  });

  it("refuses other schemes and non-URLs even with --insecure", () => {
    expect(() => checkApiUrl("ftp://127.0.0.1", true)).toThrow(/must start with https/);
    expect(() => checkApiUrl("chatbus.example.com", true)).toThrow(/not a URL/);
  });

  it("is applied by operatorEnv", () => {
    const env = { CHATBUS_OPERATOR_KEY: "k", CHATBUS_API_URL: "http://ops.example.com", USER: "u" };
    expect(() => operatorEnv(env)).toThrow(/--insecure/);
    expect(operatorEnv(env, { insecure: true }).apiUrl).toBe("http://ops.example.com");
  });
});

/**
 * Who may add and remove whom in a group, checked at the API before anything is
 * sent (issue 13 item 1). The materialiser applies the same rules to events from the
 * log, so a service key or a raw producer cannot get around them either; here they
 * become a 403 that names the rule, instead of a dead letter an operator must read.
 *
 * - `owners-grant-roles`: only an owner adds someone as `admin` or `owner`;
 * - `admins-manage-members`: owners and admins add and remove plain members;
 * - `owner-protected`: only an owner removes an admin or an owner;
 * - `keeps-an-owner`: the last owner cannot leave (grant `owner` to someone first).
 */
import type { MemberView } from "@chatbus/consumer-runtime/materialiser";
import { ApiError, conflict, notFound } from "../errors.ts";

type Role = "owner" | "admin" | "member";

/** 403 whose message starts with the rule's name, so clients and logs can tell them apart. */
export function ruleBroken(rule: string, message: string): ApiError {
  return new ApiError("CHATBUS_FORBIDDEN", `rule \`${rule}\`: ${message}`, { field: "role" });
}

function roleOf(members: MemberView[], userId: string): Role | undefined {
  return members.find((m) => m.userId === userId && m.leftAt === null)?.role as Role | undefined;
}

/** Throws unless `actor` may add `userId` with `role` (`members`: the current members). */
export function checkAdd(input: {
  members: MemberView[];
  actor: string;
  userId: string;
  role: Role;
  maxGroupMembers: number;
}): void {
  const { members, actor, userId, role, maxGroupMembers } = input;
  const actorRole = roleOf(members, actor);
  if (role !== "member" && actorRole !== "owner") {
    throw ruleBroken(
      "owners-grant-roles",
      `only an owner may add someone as \`${role}\`; you are ${actorRole ?? "not a member"}.`,
    );
  }
  if (actorRole !== "owner" && actorRole !== "admin") {
    throw ruleBroken("admins-manage-members", "only an owner or an admin may add members; ask one of them.");
  }
  if (roleOf(members, userId) !== undefined) {
    throw conflict(`"${userId}" is already a member of this conversation; nothing was sent.`);
  }
  const active = members.filter((m) => m.leftAt === null).length;
  if (active >= maxGroupMembers) {
    throw conflict(
      `this group has ${active} members, the limit (CHATBUS_MAX_GROUP_MEMBERS=${maxGroupMembers}); remove someone first.`,
    );
  }
}

/** Throws unless `actor` may remove `userId` (themselves: leaving). */
export function checkRemove(input: { members: MemberView[]; actor: string; userId: string }): void {
  const { members, actor, userId } = input;
  const actorRole = roleOf(members, actor);
  const targetRole = roleOf(members, userId);
  if (targetRole === undefined) throw notFound(`"${userId}" is not a member of this conversation.`);
  if (actor === userId) {
    const owners = members.filter((m) => m.leftAt === null && m.role === "owner").length;
    if (targetRole === "owner" && owners <= 1) {
      throw ruleBroken(
        "keeps-an-owner",
        "you are the last owner: add someone as `owner` before you leave, so the conversation keeps an owner.",
      );
    }
    return;
  }
  if (targetRole !== "member" && actorRole !== "owner") {
    throw ruleBroken("owner-protected", `only an owner may remove an ${targetRole}.`);
  }
  if (actorRole !== "owner" && actorRole !== "admin") {
    throw ruleBroken(
      "admins-manage-members",
      "only an owner or an admin may remove another member; anyone may leave (remove themselves).",
    );
  }
}

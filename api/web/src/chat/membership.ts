/** Creating conversations and adding people to a group: the two dialogs. */
import { formDialog } from "../dialogs.ts";
import { byId } from "../element.ts";
import { call, conversationPath } from "./api.ts";
import { openConversation } from "./conversation.ts";
import { refreshInboxSoon } from "./inbox.ts";
import { me, state } from "./state.ts";

export function installMembership(): void {
  byId("new-conversation").addEventListener("click", () => void newConversationDialog());
  byId<HTMLButtonElement>("add-member").addEventListener("click", () => {
    const id = state.openId;
    if (id) void addPeopleDialog(id);
  });
}

function splitUsers(value: string | undefined): string[] {
  return (value ?? "")
    .split(/[\s,]+/)
    .map((u) => u.trim())
    .filter(Boolean);
}

function newConversationDialog(): Promise<boolean> {
  return formDialog({
    title: "New conversation",
    fields: [
      {
        name: "kind",
        label: "Kind",
        type: "select",
        value: "direct",
        options: [
          { value: "direct", label: "Direct (two people)" },
          { value: "group", label: "Group" },
        ],
      },
      {
        name: "members",
        label: "With",
        required: true,
        placeholder: "bo, cy",
        hint: "User names, separated by commas. A direct conversation has one.",
      },
      { name: "title", label: "Title", placeholder: "Weekend plans", maxLength: 200 },
    ],
    onChange: (values, form) => {
      const title = form.querySelector<HTMLElement>('[data-field="title"]');
      if (title) title.hidden = values.kind !== "group";
    },
    submitLabel: "Create",
    submit: async (values) => {
      const members = splitUsers(values.members).filter((u) => u !== me());
      if (members.length === 0) throw new Error("Name at least one other user.");
      if (values.kind === "direct" && members.length !== 1) {
        throw new Error("A direct conversation is with exactly one other user; choose Group for more.");
      }
      const created = await call<{ conversationId: string }>("/v1/conversations", {
        method: "POST",
        body: {
          kind: values.kind,
          members,
          ...(values.kind === "group" && values.title ? { title: values.title } : {}),
        },
      });
      if (state.inbox.some((c) => c.id === created.conversationId)) {
        void openConversation(created.conversationId);
      } else {
        state.openWhenReady = created.conversationId; // opens once materialised
        refreshInboxSoon();
      }
    },
  });
}

function addPeopleDialog(id: string): Promise<boolean> {
  return formDialog({
    title: "Add people",
    fields: [
      {
        name: "users",
        label: "User names",
        required: true,
        placeholder: "dee, eli",
        hint: "Separated by commas.",
      },
    ],
    submitLabel: "Add",
    submit: async (values) => {
      const users = splitUsers(values.users);
      if (users.length === 0) throw new Error("Name at least one user.");
      for (const userId of users) {
        await call(`${conversationPath(id)}/members`, { method: "POST", body: { userId } });
      }
    },
  });
}

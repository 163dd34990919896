/**
 * Writing: the composer (text, the red packet), the pending list of my messages on
 * their way (retry keeps the clientMsgId, so a retry is still one message), and
 * editing and recalling my messages.
 */
import { confirmDialog, formDialog } from "../dialogs.ts";
import { byId } from "../element.ts";
import { ApiRequestError } from "../http.ts";
import { call, conversationPath, newClientMsgId } from "./api.ts";
import { renderMessages, scrollToBottom } from "./message-list.ts";
import type { MessageActions } from "./message-view.ts";
import { type Pending, state } from "./state.ts";
import type { Content, Message } from "./wire.ts";

const composer = byId<HTMLFormElement>("composer");
const composerInput = byId<HTMLTextAreaElement>("composer-input");
const composerError = byId("composer-error");

/** The actions of the buttons on messages. */
export const messageActions: MessageActions = {
  edit: (message) => void editMessage(message),
  recall: (message) => void recallMessage(message),
  retry: (pending) => void retrySend(pending),
};

/** The composer form: Enter sends, Shift+Enter is a new line; and the red packet button. */
export function installComposer(): void {
  composer.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = composerInput.value.trim();
    composerError.textContent = "";
    if (!text) return;
    composerInput.value = "";
    void send({ type: "text", text });
  });
  composerInput.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      composer.requestSubmit();
    }
  });
  byId("send-red-packet").addEventListener("click", () => void redPacketDialog());
}

function redPacketDialog(): Promise<boolean> {
  return formDialog({
    title: "Send a red packet",
    fields: [
      { name: "amount", label: "Amount", type: "number", value: "88", required: true, min: 1 },
      { name: "currency", label: "Currency", value: "CNY", required: true, maxLength: 3 },
      { name: "greeting", label: "Greeting", value: "恭喜发财", required: true, maxLength: 60 },
    ],
    submitLabel: "Send red packet",
    submit: async (values) => {
      const amount = Number(values.amount);
      if (!Number.isFinite(amount) || amount <= 0) throw new Error("The amount must be a positive number.");
      void send({
        type: "custom",
        customType: "red_packet",
        data: { amount, currency: values.currency ?? "CNY", greeting: values.greeting ?? "" },
        description: "[Red packet]",
      });
    },
  });
}

async function send(content: Content): Promise<void> {
  const id = state.openId;
  if (!id) return;
  const pending: Pending = { clientMsgId: newClientMsgId(), content, state: "sending" };
  state.pending.push(pending);
  renderMessages();
  scrollToBottom();
  await deliver(id, pending);
}

async function deliver(id: string, pending: Pending): Promise<void> {
  try {
    await call(`${conversationPath(id)}/messages`, {
      method: "POST",
      body: { content: pending.content, clientMsgId: pending.clientMsgId },
    });
    pending.state = "sent";
  } catch (error) {
    pending.state = "failed";
    pending.error =
      error instanceof ApiRequestError && error.status === 429
        ? "Too many messages right now; retry in a moment."
        : (error as Error).message;
  }
  if (state.openId === id && state.pending.includes(pending)) renderMessages();
}

function retrySend(pending: Pending): Promise<void> {
  const id = state.openId;
  if (!id) return Promise.resolve();
  pending.state = "sending";
  renderMessages();
  // The same clientMsgId: if the first try did reach Kafka, this is still one message.
  return deliver(id, pending);
}

function editMessage(message: Message): Promise<boolean> {
  const id = state.openId;
  const current = message.content?.type === "text" ? message.content.text : "";
  return formDialog({
    title: "Edit message",
    fields: [{ name: "text", label: "Message", type: "textarea", value: current, required: true }],
    submitLabel: "Save",
    submit: async (values) => {
      if (!id) return;
      await call(`${conversationPath(id)}/messages/${message.id}`, {
        method: "PATCH",
        body: { content: { type: "text", text: values.text ?? "" } },
      });
    },
  });
}

function recallMessage(message: Message): Promise<boolean> {
  const id = state.openId;
  return confirmDialog({
    title: "Recall message?",
    message: "Everyone in the conversation will see that it was recalled instead of its content.",
    confirmLabel: "Recall",
    danger: true,
    action: async () => {
      if (!id) return;
      await call(`${conversationPath(id)}/messages/${message.id}`, { method: "DELETE" });
    },
  });
}

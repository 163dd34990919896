/**
 * The chat page (`/`): dev login, the inbox with unread counts, a conversation with
 * its history (scrolling up loads older pages), a composer, delivery states of one's
 * own messages, custom messages (the red packet card), edits, recalls, presence, and
 * live updates over SSE that resume after a dropped connection.
 *
 * This module only wires the pieces together; each file of `chat/` holds one part:
 * `state` (what the page knows), `wire` (the API's shapes), `api` (calls with the
 * token), `session`, `inbox`, `conversation` (header and loading), `message-list`
 * and `message-view` (rendering), `apply-event` and `live` (SSE events),
 * `read-receipts`, `composer` (sending, editing, recalling), `membership` (dialogs)
 * and `presence`.
 */
import "../base.css";
import "../chat.css";
import { byId } from "../element.ts";
import { installComposer, messageActions } from "./composer.ts";
import { installConversation, openConversation } from "./conversation.ts";
import { installInbox } from "./inbox.ts";
import { installMembership } from "./membership.ts";
import { installMessageList } from "./message-list.ts";
import { installReadReceipts } from "./read-receipts.ts";
import { installSession, loadSession, start } from "./session.ts";

installSession();
installInbox((id) => void openConversation(id));
installConversation();
installMessageList(messageActions);
installReadReceipts();
installComposer();
installMembership();

const saved = loadSession();
if (saved) start(saved);
else byId<HTMLInputElement>("username").focus();

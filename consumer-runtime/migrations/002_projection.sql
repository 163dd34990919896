-- Materialiser: the projection of the chat.events log that chat clients read.
-- Everything here is derived from the log and can be rebuilt from it (chatbus projection rebuild).
-- Times named *_at come from the events' ce_time, except materialised_at (wall clock of the apply),
-- so a replay yields the same rows apart from materialised_at.

CREATE TABLE conversations (
  conversation_id   text        PRIMARY KEY,
  kind              text        NOT NULL CHECK (kind IN ('direct', 'group')),
  title             text,
  created_by        text        NOT NULL,
  created_at        timestamptz NOT NULL,
  created_event_id  text        NOT NULL,
  -- Kafka partition that holds the conversation (the record key decides it).
  partition         integer     NOT NULL,
  last_seq          bigint      NOT NULL DEFAULT 0,
  last_message_at   timestamptz,
  -- Time of the newest applied event of any kind; the inbox orders by it.
  last_activity_at  timestamptz NOT NULL
);

CREATE TABLE members (
  conversation_id    text        NOT NULL REFERENCES conversations (conversation_id),
  user_id            text        NOT NULL,
  role               text        NOT NULL,
  joined_at          timestamptz NOT NULL,
  -- Offset of the event that (last) added the member; they see events from there on.
  joined_offset      bigint      NOT NULL,
  -- last_seq of the conversation when the member joined: earlier messages are never unread.
  joined_seq         bigint      NOT NULL DEFAULT 0,
  left_at            timestamptz,
  left_offset        bigint,
  last_delivered_seq bigint      NOT NULL DEFAULT 0,
  last_read_seq      bigint      NOT NULL DEFAULT 0,
  -- Messages of others with seq > greatest(last_read_seq, joined_seq).
  unread_count       integer     NOT NULL DEFAULT 0,
  PRIMARY KEY (conversation_id, user_id)
);
-- Inbox: a user's current conversations.
CREATE INDEX members_by_user ON members (user_id, conversation_id) WHERE left_at IS NULL;

CREATE TABLE messages (
  conversation_id  text        NOT NULL REFERENCES conversations (conversation_id),
  seq              bigint      NOT NULL,
  event_id         text        NOT NULL UNIQUE,
  sender_id        text        NOT NULL,
  client_msg_id    text,
  content          jsonb       NOT NULL,
  priority         text        NOT NULL,
  sent_at          timestamptz NOT NULL,
  materialised_at  timestamptz NOT NULL,
  edited_at        timestamptz,
  edit_count       integer     NOT NULL DEFAULT 0,
  recalled_at      timestamptz,
  recalled_by      text,
  partition        integer     NOT NULL,
  "offset"         bigint      NOT NULL,
  -- History pages read by (conversation_id, seq): the primary key is that index.
  PRIMARY KEY (conversation_id, seq)
);
CREATE UNIQUE INDEX messages_by_client_msg_id
  ON messages (conversation_id, sender_id, client_msg_id) WHERE client_msg_id IS NOT NULL;

-- The newest receipt of each kind per member (members carries the same sequence numbers for the inbox).
CREATE TABLE receipts (
  conversation_id text        NOT NULL REFERENCES conversations (conversation_id),
  user_id         text        NOT NULL,
  kind            text        NOT NULL CHECK (kind IN ('delivered', 'read')),
  up_to_seq       bigint      NOT NULL,
  event_id        text        NOT NULL,
  receipt_at      timestamptz NOT NULL,
  PRIMARY KEY (conversation_id, user_id, kind)
);

-- A chat.message.sent that repeated an applied one: the same event id (the record was produced
-- twice) or the same (conversation, sender, clientMsgId). The first one won.
CREATE TABLE duplicate_messages (
  partition         integer     NOT NULL,
  "offset"          bigint      NOT NULL,
  event_id          text        NOT NULL,
  conversation_id   text        NOT NULL,
  sender_id         text        NOT NULL,
  client_msg_id     text,
  reason            text        NOT NULL CHECK (reason IN ('event_id', 'client_msg_id')),
  original_event_id text        NOT NULL,
  original_seq      bigint      NOT NULL,
  sent_at           timestamptz NOT NULL,
  PRIMARY KEY (partition, "offset")
);

-- Every applied event, for SSE resume by a per-partition offset vector.
CREATE TABLE event_log (
  partition        integer     NOT NULL,
  "offset"         bigint      NOT NULL,
  conversation_id  text        NOT NULL,
  event_id         text        NOT NULL,
  type             text        NOT NULL,
  -- message.sent: its seq; edited/recalled: the target's seq; receipts: upToSeq; else null.
  seq              bigint,
  payload          jsonb       NOT NULL,
  event_time       timestamptz NOT NULL,
  materialised_at  timestamptz NOT NULL,
  PRIMARY KEY (partition, "offset")
);
-- An event id is applied once, whatever offset it comes at again.
CREATE UNIQUE INDEX event_log_by_event_id ON event_log (event_id);
CREATE INDEX event_log_by_conversation ON event_log (conversation_id, partition, "offset");

-- The next offset to apply per partition, written in the same transaction as the rows.
CREATE TABLE projection_offsets (
  topic       text        NOT NULL,
  partition   integer     NOT NULL,
  next_offset bigint      NOT NULL,
  updated_at  timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (topic, partition)
);

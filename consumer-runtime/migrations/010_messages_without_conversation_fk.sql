-- Issue 12: the foreign key messages -> conversations costs a per-row check (an SPI query
-- and a key-share lock on the conversation row) on every message inserted, the
-- materialiser's hottest write. The materialiser is the only writer of the projection
-- and refuses (dead-letters) a message to a conversation it has not created
-- (evolve.ts, CHATBUS_CONVERSATION_NOT_FOUND), in the same transaction that inserts the
-- conversation; the projection can be rebuilt from the log. See docs/decisions.md.
-- members and receipts keep theirs: they are inserted rarely (a join, a member's first
-- receipt) and an UPDATE that keeps the key checks nothing.
ALTER TABLE messages DROP CONSTRAINT messages_conversation_id_fkey;

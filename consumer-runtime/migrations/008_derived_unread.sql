-- Unread counts are derived instead of counted per member (issue 18.5): a message to a
-- group of 15,000 updated 15,000 member rows. Seqs of a conversation are 1..last_seq
-- without gaps, so a member's unread is
--   coalesce(left_seq, last_seq) - greatest(last_read_seq, joined_seq) - own_after_read
-- (projection-reader.ts); a message changes only its sender's row.

-- The conversation's last seq when the member left (null while a member): unread stops there.
ALTER TABLE members ADD COLUMN left_seq bigint;
-- The member's own messages with seq > greatest(last_read_seq, joined_seq) (up to left_seq).
ALTER TABLE members ADD COLUMN own_after_read integer NOT NULL DEFAULT 0;

-- A conversation's events are all in one partition and its seqs grow with the offset:
-- the messages applied before the leave are those at lower offsets.
UPDATE members m
   SET left_seq = coalesce((SELECT max(g.seq) FROM messages g
                             WHERE g.conversation_id = m.conversation_id AND g."offset" < m.left_offset), 0)
 WHERE m.left_at IS NOT NULL;

UPDATE members m SET own_after_read = x.n
  FROM (SELECT m.conversation_id, m.user_id, count(*) AS n
          FROM members m
          JOIN messages g ON g.conversation_id = m.conversation_id AND g.sender_id = m.user_id
                         AND g.seq > greatest(m.last_read_seq, m.joined_seq)
                         AND g.seq <= coalesce(m.left_seq, g.seq)
         GROUP BY m.conversation_id, m.user_id) x
 WHERE m.conversation_id = x.conversation_id AND m.user_id = x.user_id;

ALTER TABLE members DROP COLUMN unread_count;

-- A leave checks that an owner remains: the loader reads a conversation's active owners,
-- not all its members.
CREATE INDEX members_active_owners ON members (conversation_id) WHERE role = 'owner' AND left_at IS NULL;

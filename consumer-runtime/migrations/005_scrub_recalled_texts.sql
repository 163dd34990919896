-- After a recall, neither the original nor an edited text may reach anyone again
-- (issue 13.5). The materialiser now clears a recalled message's content and the text
-- of its edits in event_log when it applies the recall; this clears what was stored
-- before, so that a live projection and a rebuilt one stay identical (verify compares them).
UPDATE event_log e SET payload = e.payload - 'content'
  FROM messages g
 WHERE g.recalled_at IS NOT NULL AND e.type = 'chat.message.edited'
   AND e.conversation_id = g.conversation_id AND e.payload->>'messageId' = g.event_id
   AND e.payload ? 'content';
UPDATE messages SET content = 'null'::jsonb WHERE recalled_at IS NOT NULL AND content <> 'null'::jsonb;

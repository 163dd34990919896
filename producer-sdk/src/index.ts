/** @chatbus/producer-sdk: the chat event contract, its record codec, and the producer. */

export type { ChatBus, SendItem, SendOptions, SendResult } from "./chat-bus.ts";
export { createChatBus } from "./chat-bus.ts";
export type { DecodeFailureCode, DecodeResult, EncodedRecord, EncodeOptions, RawRecord } from "./codec.ts";
export {
  CLOUDEVENTS_SPEC_VERSION,
  CONTENT_TYPE,
  dataSchemaUri,
  decodeRecord,
  encodeEvent,
  validateConversationId,
} from "./codec.ts";
export type { ProducerError, ProducerErrorCode } from "./errors.ts";
export {
  BrokerUnavailableError,
  BusClosedError,
  ChatBusError,
  describeError,
  ProduceRejectedError,
  producerErrorCodes,
  RateLimitedError,
  TopicMismatchError,
  ValidationError,
} from "./errors.ts";
export { uuidv7 } from "./event-id.ts";
export type { ChatEvent, ChatEventInput, ChatEventType, EventData } from "./events.ts";
export {
  ChatEventInputSchema,
  ConversationId,
  ConversationKind,
  CustomContent,
  eventDataSchemas,
  eventTypes,
  MAX_SEQ,
  MessageContent,
  MessageId,
  Priority,
  Role,
  schemaVersions,
  TextContent,
  UserId,
} from "./events.ts";
export type { ChatBusOptions } from "./options.ts";
export { ChatBusOptionsSchema } from "./options.ts";
export type { EnsureTopicOptions } from "./topic.ts";
export { chatTopicRetentionMs, ensureTopic, retentionWarning, topicRetentionMs } from "./topic.ts";
export type { UnstorableValue } from "./validation.ts";
export { findUnstorableValue } from "./validation.ts";

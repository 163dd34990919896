/** @chatbus/producer-sdk: the chat event contract, its record codec, and the producer. */

export type { DecodeFailureCode, DecodeResult, EncodedRecord, EncodeOptions, RawRecord } from "./codec.ts";
export {
  CLOUDEVENTS_SPEC_VERSION,
  CONTENT_TYPE,
  dataSchemaUri,
  decodeRecord,
  encodeEvent,
  validateConversationId,
} from "./codec.ts";
export {
  BrokerUnavailableError,
  BusClosedError,
  ChatBusError,
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
  MessageContent,
  MessageId,
  Priority,
  Role,
  schemaVersions,
  TextContent,
  UserId,
} from "./events.ts";

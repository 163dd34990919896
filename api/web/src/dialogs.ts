/**
 * Modal dialogs on the native `<dialog>` element: focus moves into them, Escape
 * cancels, and focus returns to what opened them — keyboard use for free.
 */
import { h } from "./element.ts";

/** One field of a form dialog. */
export interface DialogField {
  name: string;
  label: string;
  type?: "text" | "number" | "textarea" | "select";
  value?: string;
  required?: boolean;
  placeholder?: string;
  hint?: string;
  options?: { value: string; label: string }[];
  min?: number;
  maxLength?: number;
}

/** What a form dialog asks. */
export interface FormDialogOptions {
  title: string;
  description?: string;
  fields: DialogField[];
  submitLabel: string;
  /** Runs on submit; a thrown error is shown in the dialog, which stays open. */
  submit: (values: Record<string, string>) => Promise<void>;
  /** Called on every change, to show or hide fields. */
  onChange?: (values: Record<string, string>, form: HTMLFormElement) => void;
  danger?: boolean;
}

let counter = 0;

function formValues(form: HTMLFormElement): Record<string, string> {
  const values: Record<string, string> = {};
  for (const [key, value] of new FormData(form).entries()) values[key] = String(value).trim();
  return values;
}

/** Opens a form dialog; resolves true when submitted successfully, false when cancelled. */
export function formDialog(options: FormDialogOptions): Promise<boolean> {
  const id = `dialog-${++counter}`;
  const error = h("p", { class: "form-error", role: "alert" });
  const fields = options.fields.map((field) => {
    const fieldId = `${id}-field-${field.name}`;
    const common = {
      id: fieldId,
      name: field.name,
      required: field.required,
      placeholder: field.placeholder,
      "aria-describedby": field.hint ? `${fieldId}-hint` : undefined,
      maxlength: field.maxLength,
    };
    const control =
      field.type === "textarea"
        ? h("textarea", { ...common, rows: 3 }, field.value ?? "")
        : field.type === "select"
          ? h(
              "select",
              common,
              ...(field.options ?? []).map((o) =>
                h("option", { value: o.value, selected: o.value === field.value }, o.label),
              ),
            )
          : h("input", { ...common, type: field.type ?? "text", value: field.value, min: field.min });
    return h(
      "div",
      { class: "field", "data-field": field.name },
      h("label", { for: fieldId }, field.label),
      control,
      field.hint ? h("small", { id: `${fieldId}-hint` }, field.hint) : null,
    );
  });
  const cancel = h("button", { type: "button", class: "secondary" }, "Cancel");
  const submit = h(
    "button",
    { type: "submit", class: options.danger ? "danger" : "primary" },
    options.submitLabel,
  );
  const form = h(
    "form",
    { method: "dialog" },
    h("h2", { id: `${id}-title` }, options.title),
    options.description ? h("p", { class: "dialog-description" }, options.description) : null,
    ...fields,
    error,
    h("div", { class: "dialog-actions" }, cancel, submit),
  );
  const dialog = h("dialog", { "aria-labelledby": `${id}-title` }, form);
  document.body.append(dialog);
  options.onChange?.(formValues(form), form);
  const changed = () => options.onChange?.(formValues(form), form);
  form.addEventListener("input", changed);
  form.addEventListener("change", changed);
  return new Promise((resolve) => {
    let done = false;
    const finish = (result: boolean) => {
      if (done) return;
      done = true;
      dialog.close();
      dialog.remove();
      resolve(result);
    };
    cancel.addEventListener("click", () => finish(false));
    dialog.addEventListener("cancel", (event) => {
      event.preventDefault();
      finish(false);
    });
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      submit.disabled = true;
      error.textContent = "";
      options.submit(formValues(form)).then(
        () => finish(true),
        (failure: Error) => {
          submit.disabled = false;
          error.textContent = failure.message;
        },
      );
    });
    dialog.showModal();
  });
}

/** Asks for confirmation; resolves true when confirmed. */
export function confirmDialog(options: {
  title: string;
  message: string;
  confirmLabel: string;
  danger?: boolean;
  action: () => Promise<void>;
}): Promise<boolean> {
  return formDialog({
    title: options.title,
    description: options.message,
    fields: [],
    submitLabel: options.confirmLabel,
    submit: options.action,
    danger: options.danger ?? false,
  });
}

"""The mini-apps' words, in English and Spanish.

A page's language is the case's (the account's locale) once a session
exists; before that, the browser's first choice among those we have.
"""

from __future__ import annotations

from collections.abc import Mapping

LOCALES = ("en", "es")

TEXT: Mapping[str, Mapping[str, str]] = {
    "en": {
        "landing.title": "A message from {brand}",
        "landing.text": "Continue to see what this is about and sort it out here.",
        "continue": "Continue",
        "invalid.title": "This link does not work",
        "invalid.text": (
            "It may have expired or been used already. Reply to our message or call us "
            "and we will send you a new one."
        ),
        "hello": "Hello {name}",
        "identity.title": "First, confirm it is you",
        "identity.text": (
            "We show nothing about your account until these details match our records."
        ),
        "fact.date_of_birth": "Date of birth",
        "fact.date_of_birth.hint": "Year, month and day, for example 1984-07-21",
        "fact.postal_code": "ZIP code",
        "fact.postal_code.hint": "The 5 digits of your billing address's ZIP code",
        "fact.last4_ssn": "Last 4 digits of your Social Security number",
        "fact.last4_ssn.hint": "4 digits",
        "fact.account_last4": "Last 4 digits of your account number",
        "fact.account_last4.hint": "4 digits",
        "confirm": "Confirm",
        "identity.mismatch": "These details do not match our records. Attempts left: {left}.",
        "locked.title": "We could not confirm it is you",
        "locked.text": (
            "For your security this link no longer works. Someone from our team will "
            "contact you; you can also call us."
        ),
        "options.title": "How would you like to sort this out?",
        "options.due": "Amount due: {amount}",
        "option.pay_now": "Pay now",
        "option.pay_now.amount": "Amount to pay (from {minimum} to {maximum})",
        "option.pay_now.submit": "Pay",
        "pay.with": "Pay with",
        "pay.card": "{brand} card ending {last4}, expires {expiry}",
        "pay.bank": "Bank account ending {last4}",
        "pay.new": "A new card",
        "pay.none": "We have no way to pay on file for you here: call us to pay.",
        "pay.title": "Pay with your new card",
        "pay.text": "Enter the card to pay {amount} with.",
        "pay.confirm": "Pay {amount} with the {brand} card ending {last4} (expires {expiry})?",
        "option.update_card": "Update my card",
        "option.unavailable": "Not available here yet: call us to do this.",
        "option.update_card.help": (
            "Your card details go straight to our payment provider; we never see them."
        ),
        "option.update_card.frame": "Card details, with our payment provider",
        "upload.label": "Your document",
        "upload.hint": "{types}, up to {mb} MB",
        "upload.submit": "Send the document",
        "upload.too_large": "That file is larger than {mb} MB.",
        "upload.empty": "Choose a file to send.",
        "upload.type": "That file is not one we take: send a {types}.",
        "upload.refused": "That file did not pass our security check. Send another, or call us.",
        "details.email": "Email",
        "details.phone": "Mobile phone",
        "details.address": "Postal address (leave empty to keep the one we have)",
        "details.line1": "Street and number",
        "details.city": "City",
        "details.state": "State (two letters)",
        "details.zip": "ZIP code",
        "details.hint": "A new phone number or email needs a code we send to one we already have.",
        "details.submit": "Confirm these details",
        "code.confirm": "Confirm",
        "code.why.pay": "To pay this much online we need one more check.",
        "code.why.details": "To change where we reach you we need one more check.",
        "plan.count": "How many payments",
        "plan.count.item": "{count} payments of about {amount}",
        "plan.frequency": "How often",
        "frequency.weekly": "Every week",
        "frequency.fortnightly": "Every two weeks",
        "frequency.monthly": "Every month",
        "plan.first": "Date of the first payment",
        "plan.first.hint": "From {first} to {last}",
        "plan.review": "Review the plan",
        "plan.title": "Your payment plan",
        "plan.total": "In all: {amount}",
        "plan.due": "Date",
        "plan.amount": "Amount",
        "plan.confirm": "Agree to this plan",
        "plan.back": "Choose again",
        "plan.invalid": (
            "Choose how many payments, how often, and a first date from {first} to {last}."
        ),
        "attest.accept": "I have read this statement and I confirm it",
        "attest.submit": "Confirm the statement",
        "attest.required": "Tick the box to confirm the statement, or call us if it is not right.",
        "card.title": "Your new card",
        "card.text": "Use the {brand} card ending {last4} (expires {expiry}) for your account?",
        "card.submit": "Use this card",
        "card.unknown": "We could not find that card. Please enter it again.",
        "card.again": "Back to the options",
        "amount.invalid": "Enter an amount from {minimum} to {maximum}, like 120.50.",
        "step_up.needed": (
            "Paying more than this online needs a one-time code, which is not available "
            "here yet. Pay a smaller amount, or call us."
        ),
        "code.title": "Enter the code we sent you",
        "code.text": "We sent a 6-digit code to {to}. It works for 10 minutes.",
        "code.label": "6-digit code",
        "code.submit": "Confirm the payment of {amount}",
        "code.new": "Send me a new code",
        "code.wrong": "That code is not right. Attempts left: {left}.",
        "code.again": "We sent a new code to {to}.",
        "done.title": "Thank you, it is done",
        "done.reference": "Your reference: {reference}",
        "done.next": (
            "We are recording this on your account now. You do not need to do anything else; "
            "we will stop sending reminders about this."
        ),
        "dispute.title": "Something not right?",
        "dispute.label": "Tell us what is wrong, for example a charge you do not recognise",
        "dispute.submit": "Ask a person to look at it",
        "dispute.default": "The customer says something is not right.",
        "disputed.title": "A person will look at this",
        "disputed.text": (
            "We have stopped the reminders about this and passed it to our team, who will "
            "contact you."
        ),
        "closed.title": "There is nothing left to do here",
        "closed.text": "This matter is closed. If something is not right, call us.",
        "expired.title": "Your session has ended",
        "expired.text": "For your security, open the link in our message again to continue.",
        "stale.text": "That form was out of date. Please try again.",
        "unreachable.text": (
            "We cannot check your details right now. Nothing was counted against you: "
            "please try again in a few minutes."
        ),
        "refused.text": "We could not accept that: {reason}",
        "skip": "Skip to the main content",
    },
    "es": {
        "landing.title": "Un mensaje de {brand}",
        "landing.text": "Continúe para ver de qué se trata y resolverlo aquí.",
        "continue": "Continuar",
        "invalid.title": "Este enlace no funciona",
        "invalid.text": (
            "Puede que haya caducado o que ya se haya usado. Responda a nuestro mensaje o "
            "llámenos y le enviaremos uno nuevo."
        ),
        "hello": "Hola, {name}",
        "identity.title": "Primero, confirme que es usted",
        "identity.text": (
            "No mostramos nada de su cuenta hasta que estos datos coincidan con nuestros registros."
        ),
        "fact.date_of_birth": "Fecha de nacimiento",
        "fact.date_of_birth.hint": "Año, mes y día, por ejemplo 1984-07-21",
        "fact.postal_code": "Código postal",
        "fact.postal_code.hint": "Los 5 dígitos del código postal de su dirección de facturación",
        "fact.last4_ssn": "Últimos 4 dígitos de su número de Seguro Social",
        "fact.last4_ssn.hint": "4 dígitos",
        "fact.account_last4": "Últimos 4 dígitos de su número de cuenta",
        "fact.account_last4.hint": "4 dígitos",
        "confirm": "Confirmar",
        "identity.mismatch": (
            "Estos datos no coinciden con nuestros registros. Intentos restantes: {left}."
        ),
        "locked.title": "No pudimos confirmar que es usted",
        "locked.text": (
            "Por su seguridad, este enlace ya no funciona. Alguien de nuestro equipo se "
            "pondrá en contacto con usted; también puede llamarnos."
        ),
        "options.title": "¿Cómo prefiere resolverlo?",
        "options.due": "Importe pendiente: {amount}",
        "option.pay_now": "Pagar ahora",
        "option.pay_now.amount": "Importe a pagar (de {minimum} a {maximum})",
        "option.pay_now.submit": "Pagar",
        "pay.with": "Pagar con",
        "pay.card": "Tarjeta {brand} que termina en {last4}, caduca {expiry}",
        "pay.bank": "Cuenta bancaria que termina en {last4}",
        "pay.new": "Una tarjeta nueva",
        "pay.none": "No tenemos ninguna forma de pago registrada: llámenos para pagar.",
        "pay.title": "Pague con su tarjeta nueva",
        "pay.text": "Escriba la tarjeta con la que pagará {amount}.",
        "pay.confirm": (
            "¿Pagar {amount} con la tarjeta {brand} que termina en {last4} (caduca {expiry})?"
        ),
        "option.update_card": "Actualizar mi tarjeta",
        "option.unavailable": "Todavía no disponible aquí: llámenos para hacerlo.",
        "option.update_card.help": (
            "Los datos de su tarjeta van directamente a nuestro proveedor de pagos; "
            "nosotros nunca los vemos."
        ),
        "option.update_card.frame": "Datos de la tarjeta, con nuestro proveedor de pagos",
        "upload.label": "Su documento",
        "upload.hint": "{types}, hasta {mb} MB",
        "upload.submit": "Enviar el documento",
        "upload.too_large": "Ese archivo ocupa más de {mb} MB.",
        "upload.empty": "Elija un archivo para enviar.",
        "upload.type": "No aceptamos ese archivo: envíe un {types}.",
        "upload.refused": (
            "Ese archivo no superó nuestro control de seguridad. Envíe otro o llámenos."
        ),
        "details.email": "Correo electrónico",
        "details.phone": "Teléfono móvil",
        "details.address": "Dirección postal (déjela vacía para conservar la que tenemos)",
        "details.line1": "Calle y número",
        "details.city": "Ciudad",
        "details.state": "Estado (dos letras)",
        "details.zip": "Código postal",
        "details.hint": (
            "Un teléfono o correo nuevo requiere un código que enviamos a uno que ya tenemos."
        ),
        "details.submit": "Confirmar estos datos",
        "code.confirm": "Confirmar",
        "code.why.pay": "Para pagar esta cantidad en línea necesitamos una comprobación más.",
        "code.why.details": "Para cambiar dónde le contactamos necesitamos una comprobación más.",
        "plan.count": "Cuántos pagos",
        "plan.count.item": "{count} pagos de unos {amount}",
        "plan.frequency": "Cada cuánto",
        "frequency.weekly": "Cada semana",
        "frequency.fortnightly": "Cada dos semanas",
        "frequency.monthly": "Cada mes",
        "plan.first": "Fecha del primer pago",
        "plan.first.hint": "Del {first} al {last}",
        "plan.review": "Revisar el plan",
        "plan.title": "Su plan de pagos",
        "plan.total": "En total: {amount}",
        "plan.due": "Fecha",
        "plan.amount": "Importe",
        "plan.confirm": "Aceptar este plan",
        "plan.back": "Elegir de nuevo",
        "plan.invalid": (
            "Elija cuántos pagos, cada cuánto y una primera fecha del {first} al {last}."
        ),
        "attest.accept": "He leído esta declaración y la confirmo",
        "attest.submit": "Confirmar la declaración",
        "attest.required": (
            "Marque la casilla para confirmar la declaración, o llámenos si no es correcta."
        ),
        "card.title": "Su nueva tarjeta",
        "card.text": (
            "¿Usar la tarjeta {brand} que termina en {last4} (caduca {expiry}) en su cuenta?"
        ),
        "card.submit": "Usar esta tarjeta",
        "card.unknown": "No encontramos esa tarjeta. Escríbala de nuevo.",
        "card.again": "Volver a las opciones",
        "amount.invalid": "Escriba un importe de {minimum} a {maximum}, por ejemplo 120.50.",
        "step_up.needed": (
            "Pagar más de esta cantidad en línea requiere un código de un solo uso, que aún "
            "no está disponible aquí. Pague un importe menor o llámenos."
        ),
        "code.title": "Escriba el código que le enviamos",
        "code.text": "Le enviamos un código de 6 dígitos a {to}. Sirve durante 10 minutos.",
        "code.label": "Código de 6 dígitos",
        "code.submit": "Confirmar el pago de {amount}",
        "code.new": "Enviarme un código nuevo",
        "code.wrong": "Ese código no es correcto. Intentos restantes: {left}.",
        "code.again": "Le enviamos un código nuevo a {to}.",
        "done.title": "Gracias, ya está hecho",
        "done.reference": "Su referencia: {reference}",
        "done.next": (
            "Lo estamos registrando en su cuenta ahora. No tiene que hacer nada más; "
            "dejaremos de enviarle recordatorios sobre esto."
        ),
        "dispute.title": "¿Algo no está bien?",
        "dispute.label": "Díganos qué ocurre, por ejemplo un cargo que no reconoce",
        "dispute.submit": "Pedir que lo revise una persona",
        "dispute.default": "El cliente dice que algo no está bien.",
        "disputed.title": "Una persona revisará esto",
        "disputed.text": (
            "Hemos detenido los recordatorios sobre este asunto y lo hemos pasado a nuestro "
            "equipo, que se pondrá en contacto con usted."
        ),
        "closed.title": "Aquí ya no queda nada por hacer",
        "closed.text": "Este asunto está cerrado. Si algo no está bien, llámenos.",
        "expired.title": "Su sesión ha terminado",
        "expired.text": (
            "Por su seguridad, vuelva a abrir el enlace de nuestro mensaje para continuar."
        ),
        "stale.text": "Ese formulario estaba desactualizado. Inténtelo de nuevo.",
        "unreachable.text": (
            "No podemos comprobar sus datos en este momento. No se le ha contado ningún "
            "intento: vuelva a intentarlo en unos minutos."
        ),
        "refused.text": "No pudimos aceptarlo: {reason}",
        "skip": "Saltar al contenido principal",
    },
}


def pick(accept_language: str | None) -> str:
    """The first locale of an Accept-Language header that we have (else en)."""
    ranked = []
    for part in (accept_language or "").split(","):
        tag, _, q = part.strip().partition(";q=")
        try:
            weight = float(q) if q else 1.0
        except ValueError:
            continue
        language = tag.split("-")[0].lower()
        if language in LOCALES:
            ranked.append((-weight, language))
    return min(ranked)[1] if ranked else "en"


# Why the engine or the customer service refused something, as the customer may read
# it. The engine speaks English (its reasons go into the case history); a page in
# another language shows the translation, or the English when there is none.
REASONS: Mapping[str, Mapping[str, str]] = {
    "es": {
        "identity must be confirmed first": "primero debe confirmar su identidad",
        "amount must be a number": "el importe debe ser un número",
        "the statement was changed; read it again": "el texto cambió; léalo de nuevo",
        "the statement must be accepted": "debe aceptar el texto",
        "the email address is not valid": "el correo electrónico no es válido",
        "the phone number is not valid": "el número de teléfono no es válido",
        "the address needs a street, a city, a state and a ZIP code": (
            "la dirección necesita calle, ciudad, estado y código postal"
        ),
        "the state must be its two-letter code": "el estado debe ser su código de dos letras",
        "the ZIP code must be 5 digits": "el código postal debe tener 5 dígitos",
        "choose a payment method on file or a new card, not both": (
            "elija una forma de pago registrada o una tarjeta nueva, no ambas"
        ),
        "choose a payment method on file or a new card": (
            "elija una forma de pago registrada o una tarjeta nueva"
        ),
        "that payment method is not on file for this account": (
            "esa forma de pago no está registrada en esta cuenta"
        ),
        "too many codes were sent; wait a few minutes": (
            "se enviaron demasiados códigos; espere unos minutos"
        ),
        "there is no phone or email on file to send a code to": (
            "no tenemos un teléfono ni un correo registrado al que enviar un código"
        ),
    }
}


def reason(locale: str, why: str) -> str:
    """A refusal's reason in `locale` (the engine's English when there is no translation)."""
    return REASONS.get(locale, {}).get(why, why)


def text(locale: str, key: str, *, default: str | None = None, **values: object) -> str:
    """The words for `key` in `locale` (English if missing there), filled in."""
    words = TEXT.get(locale, TEXT["en"])
    found = words.get(key) or TEXT["en"].get(key)
    if found is None:
        if default is None:
            raise KeyError(f"no text {key!r}")
        return default
    return found.format(**values)

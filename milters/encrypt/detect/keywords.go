package detect

// Keywords near a card number change its confidence. A positive keyword
// (card, cvv, expiry …, in the languages our tenants write) within window
// bytes before or after the number makes it High; so does an expiry date
// (MM/YY, MM/YYYY). A negative keyword — one naming another kind of long
// number (IMEI, tracking, invoice, order, phone …) — with no positive one
// nearby makes the number Suppressed: a Luhn-valid number with an issuer
// prefix next to "IMEI" or "Invoice no." is that, not a card. Generic words
// that also stand next to real card numbers ("account", "number", "id") are
// in neither list.

type kwKind uint8

const (
	kwNone kwKind = iota
	kwPositive
	kwNegative
)

// window is how far (in bytes of text) a keyword or expiry date may be from
// the number, before or after it.
const window = 64

// maxWord is the longest word looked up; longer words are not keywords.
const maxWord = 24

var keywords = func() map[string]kwKind {
	m := map[string]kwKind{}
	for _, w := range []string{
		// English
		"card", "cards", "credit", "creditcard", "debit", "visa", "mastercard", "amex",
		"maestro", "discover", "jcb", "diners", "unionpay", "cardholder", "cardnumber",
		"pan", "cvv", "cvv2", "cvc", "cvc2", "cid", "csc", "expiry", "exp", "expires",
		"expiration", "expiring", "thru",
		// German
		"kreditkarte", "kreditkarten", "kreditkartennummer", "karte", "kartennummer",
		"karteninhaber", "ablaufdatum", "gültig", "prüfnummer", "girocard",
		// French, Spanish, Italian, Portuguese, Dutch
		"carte", "bancaire", "cb", "cryptogramme", "expiration", "tarjeta", "caducidad",
		"vencimiento", "carta", "scadenza", "cartão", "validade", "kaart", "betaalkaart",
		"vervaldatum",
	} {
		m[w] = kwPositive
	}
	for _, w := range []string{
		// devices
		"imei", "imeisv", "meid", "esn", "iccid", "serial", "seriennummer", "sn",
		// shipping
		"tracking", "track", "sendung", "sendungsnummer", "awb", "waybill", "parcel",
		"shipment", "consignment", "paket", "colis", "envío",
		// invoices and orders
		"invoice", "rechnung", "rechnungsnummer", "facture", "factura", "fattura",
		"order", "orders", "bestellung", "bestellnummer", "commande", "pedido", "ordine",
		"ref", "reference", "referenz", "ticket", "booking", "buchung", "vat", "ust",
		"customer", "kundennummer", "vertragsnummer",
		// identifiers
		"isbn", "issn", "ean", "gtin", "upc", "guid", "uuid",
		// phones
		"tel", "phone", "telephone", "telefon", "fax", "mobile", "mobil", "handy",
	} {
		m[w] = kwNegative
	}
	return m
}()

// kwFilter[b] has bit n set when some keyword (or "american", "express")
// of n bytes starts with b: most words skip the map look-up.
var kwFilter = func() (t [256]uint32) {
	for w := range keywords {
		t[w[0]] |= 1 << len(w)
	}
	for _, w := range []string{"american", "express"} {
		t[w[0]] |= 1 << len(w)
	}
	return t
}()

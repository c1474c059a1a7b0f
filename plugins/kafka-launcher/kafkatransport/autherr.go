package kafkatransport

import (
	"errors"
	"fmt"

	"github.com/IBM/sarama"
)

// ErrAuthentication marks the error of a connection whose SASL credentials
// the brokers refused: errors.Is(err, ErrAuthentication).
var ErrAuthentication = errors.New("kafka authentication failed")

// authError is ErrAuthentication for a user, wrapping what the client saw.
type authError struct {
	user, mechanism string
	detail          string
	err             error
}

// Error implements error.
func (e *authError) Error() string {
	return fmt.Sprintf("%v for user %q (%s): %s: %v", ErrAuthentication, e.user, e.mechanism, e.detail, e.err)
}

// Unwrap lets errors.Is find both ErrAuthentication and the client's error.
func (e *authError) Unwrap() []error { return []error{ErrAuthentication, e.err} }

// saslRefusals are the broker answers that mean the credentials, or how
// they are presented, were refused.
var saslRefusals = []error{sarama.ErrSASLAuthenticationFailed, sarama.ErrIllegalSASLState, sarama.ErrUnsupportedSASLMechanism}

// explainAuth returns err, from connecting with sc as cfg says, as an
// authentication failure when it is one. A broker that refuses SASL
// credentials either answers SaslAuthenticationFailed (which the client
// reports in so many words) or, as the embedded broker does for a wrong
// SCRAM password, closes the connection in the middle of the exchange,
// which the client reports as "run out of available brokers: EOF". For
// those, it connects again to the first broker that answers: when the
// same connection without SASL is served (an ApiVersions request, which
// brokers answer before authentication) but the one with SASL is not, the
// brokers refused the credentials.
func explainAuth(cfg Config, sc *sarama.Config, err error) error {
	if err == nil || cfg.SASL == nil || errors.Is(err, ErrAuthentication) {
		return err
	}
	fail := func(detail string, cause error) error {
		return &authError{user: cfg.SASL.Username, mechanism: cfg.SASL.Mechanism, detail: detail, err: cause}
	}
	for _, r := range saslRefusals {
		if errors.Is(err, r) {
			return fail("the brokers refused the credentials", err)
		}
	}
	for _, addr := range cfg.Brokers {
		saslErr := openBroker(addr, sc)
		if saslErr == nil {
			return err // authentication works: something else failed
		}
		for _, r := range saslRefusals {
			if errors.Is(saslErr, r) {
				return fail("the brokers refused the credentials", err)
			}
		}
		plain := *sc
		plain.Net.SASL.Enable = false
		if openBroker(addr, &plain) == nil {
			return fail(fmt.Sprintf("broker %s closed the connection during SASL authentication (wrong password, or a user it does not know)", addr), err)
		}
	}
	return err
}

// openBroker connects to the broker at addr as sc says (authenticating if
// sc has SASL) and asks for its API versions: nil when that works.
func openBroker(addr string, sc *sarama.Config) error {
	b := sarama.NewBroker(addr)
	if err := b.Open(sc); err != nil {
		return err
	}
	defer b.Close()
	if _, err := b.Connected(); err != nil {
		return err
	}
	_, err := b.ApiVersions(&sarama.ApiVersionsRequest{})
	return err
}

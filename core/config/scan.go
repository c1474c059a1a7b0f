package config

import (
	"fmt"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
)

// Bounds on the shape of a configuration file, checked on its tokens before
// it is parsed: hcl's parser, and the evaluation of what it builds, recurse
// once per level, so unbounded nesting would exhaust the stack (60,000
// nested "[" crashed `conveyor validate` with a fatal stack overflow, which
// no recover can catch).
const (
	// MaxNesting bounds how deep brackets, braces, parentheses, quotes,
	// heredocs and template sequences (${ } and %{ }) nest, blocks
	// included.
	MaxNesting = 64
	// MaxOperators bounds the operators (arithmetic, logical, comparison,
	// ?:, ., and each opening bracket) between two separators (a comma,
	// or a newline between items of a block or an object) at one level:
	// a+b+c... builds one level of the expression tree per operator.
	MaxOperators = 256
	// MaxItems bounds the items of one list, tuple, object or map (not of
	// a block body): converting a list to a typed one takes time growing
	// with the square of its length (30,000 labels took half a minute).
	MaxItems = 512
)

// closerOf maps each opening token to the token that closes it.
var closerOf = map[hclsyntax.TokenType]hclsyntax.TokenType{
	hclsyntax.TokenOBrace:          hclsyntax.TokenCBrace,
	hclsyntax.TokenOBrack:          hclsyntax.TokenCBrack,
	hclsyntax.TokenOParen:          hclsyntax.TokenCParen,
	hclsyntax.TokenOQuote:          hclsyntax.TokenCQuote,
	hclsyntax.TokenOHeredoc:        hclsyntax.TokenCHeredoc,
	hclsyntax.TokenTemplateInterp:  hclsyntax.TokenTemplateSeqEnd,
	hclsyntax.TokenTemplateControl: hclsyntax.TokenTemplateSeqEnd,
}

// operators are the tokens that add a level to an expression's tree.
var operators = map[hclsyntax.TokenType]bool{
	hclsyntax.TokenBang: true, hclsyntax.TokenMinus: true, hclsyntax.TokenPlus: true,
	hclsyntax.TokenStar: true, hclsyntax.TokenSlash: true, hclsyntax.TokenPercent: true,
	hclsyntax.TokenAnd: true, hclsyntax.TokenOr: true,
	hclsyntax.TokenEqualOp: true, hclsyntax.TokenNotEqual: true,
	hclsyntax.TokenLessThan: true, hclsyntax.TokenLessThanEq: true,
	hclsyntax.TokenGreaterThan: true, hclsyntax.TokenGreaterThanEq: true,
	hclsyntax.TokenQuestion: true, hclsyntax.TokenDot: true, hclsyntax.TokenEllipsis: true,
}

// checkShape reports the first place where src, the configuration file
// filename, nests deeper than MaxNesting, chains more than MaxOperators
// operators, or iterates (a for expression or a %{for} directive: there are
// no variables to iterate over, and an iteration multiplies what it holds,
// so a few lines could expand to gigabytes). Lexing errors are left to the
// parser.
func checkShape(src []byte, filename string) hcl.Diagnostics {
	toks, _ := hclsyntax.LexConfig(src, filename, hcl.InitialPos)
	type frame struct {
		open  hclsyntax.TokenType
		block bool // the body of a block (or the file), not an object
		ops   int  // operators since the last separator
		items int  // separators so far, in a collection
		item  bool // a token since the last separator
	}
	stack := []frame{{open: hclsyntax.TokenOBrace, block: true}} // the file's body
	var prev hclsyntax.TokenType
	for i, tok := range toks {
		top := &stack[len(stack)-1]
		separator := tok.Type == hclsyntax.TokenComma ||
			(top.open == hclsyntax.TokenOBrace && (tok.Type == hclsyntax.TokenNewline || (tok.Type == hclsyntax.TokenComment && len(tok.Bytes) > 0 && tok.Bytes[len(tok.Bytes)-1] == '\n')))
		if separator && top.item && !top.block {
			top.items++
			if top.items >= MaxItems {
				return hcl.Diagnostics{errorAt(tok.Range, "Too many items",
					fmt.Sprintf("A list, tuple, object or map holds at most %d items.", MaxItems))}
			}
		}
		if separator {
			top.item = false
		} else if tok.Type != hclsyntax.TokenNewline && tok.Type != hclsyntax.TokenComment {
			top.item = true
		}
		// A brace after a name or a label opens a block's body; anywhere
		// else, an object.
		block := tok.Type == hclsyntax.TokenOBrace && (prev == hclsyntax.TokenIdent || prev == hclsyntax.TokenCQuote)
		if tok.Type != hclsyntax.TokenNewline && tok.Type != hclsyntax.TokenComment {
			prev = tok.Type
		}
		switch {
		case closerOf[tok.Type] != 0:
			if len(stack) > MaxNesting {
				return hcl.Diagnostics{errorAt(tok.Range, "Configuration nested too deeply",
					fmt.Sprintf("Brackets, braces, parentheses, quotes and template sequences nest more than %d levels deep here (blocks included); flatten the configuration.", MaxNesting))}
			}
			if forAt(toks, i) {
				return hcl.Diagnostics{errorAt(tok.Range, "Iteration is not supported",
					"A configuration has no variables to iterate over, and iterating could multiply its size without bound: write the items out instead of using a for expression or a %{for} directive.")}
			}
			top.ops++
			if top.ops > MaxOperators {
				return tooManyOperators(tok.Range)
			}
			stack = append(stack, frame{open: tok.Type, block: block})
		case tok.Type == closerOf[top.open] && len(stack) > 1:
			stack = stack[:len(stack)-1]
		case separator:
			top.ops = 0 // newlines separate the items of a body or an object
		case operators[tok.Type]:
			top.ops++
			if top.ops > MaxOperators {
				return tooManyOperators(tok.Range)
			}
		}
	}
	return nil
}

// tooManyOperators is the diagnostic for a chain of more than MaxOperators.
func tooManyOperators(rng hcl.Range) hcl.Diagnostics {
	return hcl.Diagnostics{errorAt(rng, "Expression too long",
		fmt.Sprintf("This expression chains more than %d operators at one level; split it up.", MaxOperators))}
}

// forAt reports whether the opening token toks[i] starts an iteration: a
// for expression ([for x in ...], {for k, v in ...}) or a %{for} directive.
func forAt(toks hclsyntax.Tokens, i int) bool {
	open := toks[i].Type
	j := i + 1
	skip := func() {
		for j < len(toks) && (toks[j].Type == hclsyntax.TokenNewline || toks[j].Type == hclsyntax.TokenComment) {
			j++
		}
	}
	isIdent := func(name string) bool {
		return j < len(toks) && toks[j].Type == hclsyntax.TokenIdent && (name == "" || string(toks[j].Bytes) == name)
	}
	skip()
	if !isIdent("for") {
		return false
	}
	if open == hclsyntax.TokenTemplateControl {
		return true
	}
	if open != hclsyntax.TokenOBrack && open != hclsyntax.TokenOBrace {
		return false
	}
	j++
	skip()
	if !isIdent("") {
		return false // "for" is an attribute name, as in { for = 1 }
	}
	j++
	skip()
	return isIdent("in") || (j < len(toks) && toks[j].Type == hclsyntax.TokenComma)
}
